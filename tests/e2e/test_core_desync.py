"""Desynchronisation between client, proxy and backend (RFC 9112 §6.3, §6.1,
RFC 9110 §7.6.1, §7.8): bytes a backend sends past the end of a response
never become another request's response; a 101 without Upgrade opens no
tunnel; transfer codings other than chunked are refused rather than
dropped; underscore twins of the fields the proxy controls never reach the
backend."""

import socket
import threading
import time

from tglib import *

ROUTE = "app.test"


class ScriptBackend(RawBackend):
    """A raw backend that answers each request head on each connection with
    answer(conn_index, request_index, head) -> bytes, and records what it
    received per connection."""

    def __init__(self, answer):
        self.received = []
        self.lock = threading.Lock()

        def serve(s, n):
            with self.lock:
                self.received.append(b"")
            data, k = b"", 0
            s.settimeout(3)
            while True:
                while data.count(b"\r\n\r\n") <= k:
                    try:
                        d = s.recv(65536)
                    except OSError:
                        d = b""
                    if not d:
                        return False
                    data += d
                    with self.lock:
                        self.received[n] += d
                head = data.split(b"\r\n\r\n")[k]
                s.sendall(answer(n, k, head))
                k += 1
        super().__init__(serve)


def _client(port, data, wait=1.0):
    """Sends data, reads until the connection is quiet for wait seconds
    (the first byte may take up to 5 s: a loaded machine is slow)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(data)
    out = b""
    try:
        out = s.recv(65536)
    except socket.timeout:
        pass
    s.settimeout(wait)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except socket.timeout:
        pass
    s.close()
    return out


def _over_long_first_answer(body_len):
    def answer(n, k, head):
        if n == 0 and k == 0:
            return (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body_len + b"a" * body_len +
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED")
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nREAL"
    return answer


def test_bytes_past_a_spliced_response_never_answer_the_next_request():
    """The body is spliced: exactly Content-Length bytes leave the backend's
    socket, the extra response stays in it; the pipelined request must go
    to a clean connection."""
    with ScriptBackend(_over_long_first_answer(200000)) as b, \
            Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"GET /1 HTTP/1.1\r\nHost: app.test\r\n\r\n"
                               b"GET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert b"POISONED" not in out, out[-200:]
        assert out.endswith(b"REAL"), out[-200:]
        assert len(b.received) == 2, b.received          # /2 went on a new connection


def test_bytes_past_a_copied_response_never_answer_the_next_request():
    with ScriptBackend(_over_long_first_answer(100)) as b, \
            Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"GET /1 HTTP/1.1\r\nHost: app.test\r\n\r\n"
                               b"GET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert b"POISONED" not in out, out[-200:]
        assert out.endswith(b"REAL"), out[-200:]


def test_a_body_after_a_head_answer_never_answers_the_next_request():
    """A HEAD answer whose head fills the first read exactly, followed by a
    body it must not have."""
    def answer(n, k, head):
        if head.startswith(b"HEAD"):
            base = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nX-Pad: "
            pad = (16384 - 128) - len(base) - 4
            return base + b"p" * pad + b"\r\n\r\n" + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nREAL"
    with ScriptBackend(answer) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"HEAD /1 HTTP/1.1\r\nHost: app.test\r\n\r\n"
                               b"GET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert b"POISONED" not in out, out[-200:]
        assert out.endswith(b"REAL"), out[-200:]


def test_a_101_without_upgrade_opens_no_tunnel():
    """RFC 9110 §7.8: a 101 must say what it switches to.  A backend path that
    reflects a status code must not turn the client's connection into a raw
    pipe past the proxy's routing and forwarding fields."""
    def answer(n, k, head):
        return b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n"
    with ScriptBackend(answer) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"GET /status?code=101 HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n"
                               b"Upgrade: websocket\r\n\r\n", wait=0.5)
        assert out.startswith(b"HTTP/1.1 502"), out[:200]


def test_a_101_naming_the_upgrade_still_opens_the_tunnel():
    def answer(n, k, head):
        return b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    with ScriptBackend(answer) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n"
                               b"Upgrade: websocket\r\n\r\n", wait=0.5)
        assert out.startswith(b"HTTP/1.1 101"), out[:200]


def test_a_101_to_a_protocol_the_client_did_not_offer_opens_no_tunnel():
    """RFC 9110 §7.8: the server switches to a protocol from the client's
    Upgrade list.  A client that asked for a WebSocket and a backend that
    answers `101 Upgrade: h2c` get a 502, not a pipe (as Go's ReverseProxy)."""
    def answer(n, k, head):
        return b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    with ScriptBackend(answer) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n"
                               b"Upgrade: websocket\r\n\r\n", wait=0.5)
        assert out.startswith(b"HTTP/1.1 502"), out[:200]


def test_an_h2c_upgrade_is_not_offered_to_the_backend():
    """h2c smuggling: a backend that accepted `Upgrade: h2c` would take the
    client's connection past path rules and the forwarding fields.  The
    upgrade to cleartext HTTP/2 is deprecated (RFC 9113 §3.1): the request
    reaches the backend as a plain one, without Upgrade or HTTP2-Settings
    (a 101 to a request that offered no upgrade is a 502: see above)."""
    def answer(n, k, head):
        if b"upgrade:" in head.lower():
            return b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"
    with ScriptBackend(answer) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", wait=0.5)
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"plain"), out[:300]
        head = b.received[0].lower()
        assert b"upgrade" not in head and b"http2-settings" not in head, b.received[0]


def test_request_transfer_codings_other_than_chunked_are_refused():
    """RFC 9112 §6.1: tollgate relays only chunked framing; a coding it would
    drop (gzip before chunked) is answered 501 instead of forwarded as if
    the body were plain."""
    seen = []

    def answer(n, k, head):
        seen.append(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with ScriptBackend(answer) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        for te in (b"gzip, chunked", b"gzip\r\nTransfer-Encoding: chunked", b"deflate,chunked"):
            out = _client(tg.port, b"POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: " + te +
                          b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", wait=0.5)
            assert out.startswith(b"HTTP/1.1 501"), (te, out[:200])
        assert seen == [], seen


def test_response_transfer_codings_other_than_chunked_are_refused():
    """A response whose codings tollgate would drop is a 502, as in nginx."""
    for te in (b"gzip, chunked", b"gzip"):
        def answer(n, k, head, te=te):
            body = b"5\r\nhello\r\n0\r\n\r\n" if te.endswith(b"chunked") else b"hello"
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + te + b"\r\n\r\n" + body
        with ScriptBackend(answer) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
            out = _client(tg.port, b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n", wait=0.5)
            assert out.startswith(b"HTTP/1.1 502"), (te, out[:200])


def test_underscore_twins_of_forwarding_fields_do_not_reach_the_backend():
    """CGI-style backends read X_Forwarded_For as X-Forwarded-For (both become
    HTTP_X_FORWARDED_FOR): the client's would be merged with tollgate's."""
    with ScriptBackend(lambda n, k, h: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as b, \
            Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"GET /x HTTP/1.1\r\nHost: app.test\r\nX_Forwarded_For: 6.6.6.6\r\n"
                               b"x_forwarded_host: evil.example\r\nX_FORWARDED_PROTO: https\r\n"
                               b"Content_Length: 5\r\nX_Custom_Key: kept\r\n\r\n", wait=0.5)
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
        head = b.received[0].lower()
        for bad in (b"6.6.6.6", b"evil.example", b"x_forwarded_proto", b"content_length"):
            assert bad not in head, head
        assert b"x_custom_key: kept" in head, head


def test_interim_responses_lose_their_hop_by_hop_fields():
    """RFC 9110 §7.6.1 applies to 1xx answers too: Connection and what it
    lists go; the rest (Link of 103 Early Hints) crosses."""
    def answer(n, k, head):
        return (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: close, X-Hop\r\n"
                b"X-Hop: 1\r\nKeep-Alive: timeout=1\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    with ScriptBackend(answer) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n", wait=0.5)
        interim, _, rest = out.partition(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\n"), out[:300]
        low = interim.lower()
        assert b"link: </a.css>; rel=preload" in low, interim
        for gone in (b"connection:", b"x-hop:", b"keep-alive:"):
            assert gone not in low, interim
        assert rest.startswith(b"HTTP/1.1 200 OK") and rest.endswith(b"ok"), rest


def test_a_cut_chunked_body_reaches_an_http10_client_as_far_as_it_came():
    """An HTTP/1.0 client reads the de-chunked body to the close.  When the
    backend cuts the chunked body, the client gets every byte that came
    (billed bytes are never thrown away by a reset) and the log says so."""
    def serve_then_close(s, n):
        read_request_head(s)
        s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
        return False                       # the backend closes mid-body
    with RawBackend(serve_then_close) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"GET /x HTTP/1.0\r\nHost: app.test\r\n\r\n", wait=1.0)
        assert out.startswith(b"HTTP/1.0 200") and out.endswith(b"\r\n\r\nok"), out
        wait_until(lambda: "cut a chunked body short" in tg.log_text(), 3, "the cut in the log")


def test_an_early_answer_reaches_a_client_still_sending_its_body():
    """The backend answers an upload before reading it.  tollgate closes
    after the answer, but a close with the client's bytes unread makes the
    kernel reset the connection and throw away what the client had not read
    yet -- bytes already counted as sent.  A lingering close (half-close,
    drop what still comes) delivers the whole answer, and the access log's
    bytes out are what the client received."""
    size = 1000000

    def serve(s, n):
        read_request_head(s)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        time.sleep(4)
        return False
    for splice in ("16384", "0"):
        with RawBackend(serve) as b, Tollgate(routes=[ROUTE + "=" + b.addr],
                                              args=["--splice-min-body", splice]) as tg:
            s = socket.create_connection(("127.0.0.1", tg.port), timeout=5)
            s.sendall(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 50000000\r\n\r\n")
            s.setblocking(False)
            t0 = time.time()
            while time.time() - t0 < 1.5:          # push body without reading
                try:
                    s.send(b"y" * 65536)
                except BlockingIOError:
                    time.sleep(0.02)
            s.setblocking(True)
            s.settimeout(5)
            got = b""
            try:
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
            except ConnectionResetError:
                pass
            s.close()
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and len(body) == size, (splice, head[:80], len(body))
            line = wait_until(lambda: tg.access_log_lines(), 3, "an access log line")[-1]
            assert line.split()[7] == str(len(got)), (splice, line, len(got))


def _upload_and_read(port, length, read_after=0.0):
    """POSTs a Content-Length body of `length` bytes from a thread (until the
    connection refuses more) while reading the answer to EOF, starting
    read_after seconds late.  Returns (bytes read, whether a reset ended it)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % length)

    def push():
        try:
            for _ in range(length // 65536):
                s.sendall(b"y" * 65536)
        except OSError:
            pass
    t = threading.Thread(target=push, daemon=True)
    t.start()
    time.sleep(read_after)
    data, reset = b"", False
    try:
        while True:
            d = s.recv(262144)
            if not d:
                break
            data += d
    except ConnectionResetError:
        reset = True
    except OSError:
        pass
    s.close()
    t.join(5)
    return data, reset


def test_an_early_answer_then_a_reset_reaches_the_client():
    """The backend answers an upload early and closes with the body unread,
    so its kernel resets the connection right after the answer.  tollgate,
    blocked writing the body, finds out by a failed write -- in the same
    wake-up as the answer's arrival, and sometimes first.  The answer is in
    its socket all the same: the client gets the 413, never a 502."""
    def serve(s, n):
        read_request_head(s)
        time.sleep(0.15)          # tollgate fills the socket and waits to write
        s.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
        return False              # closed with the body unread: a reset
    got = []
    with RawBackend(serve) as b, Tollgate(routes=[ROUTE + "=" + b.addr], workers=1) as tg:
        for _ in range(12):
            data, _ = _upload_and_read(tg.port, 20000000)
            got.append(data.split(b"\r\n")[0])
        assert got == [b"HTTP/1.1 413 Payload Too Large"] * 12, got
        assert "closed the connection before the response head" not in tg.log_text(), tg.log_text()


def test_an_early_answer_cut_by_the_backend_delivers_every_billed_byte():
    """The backend answers an upload early with a long body, sends part of
    it and resets (the upload unread; what its kernel had not sent yet is
    lost with the reset).  The client, still uploading, reads
    late.  tollgate closes the client connection to show the cut -- after
    what it was sent has reached it: closing with the client's body unread
    would make Linux reset the connection and throw away bytes already
    counted as sent.  Received == the access log's bytes out, spliced or
    copied."""
    size, sent = 3000000, 2000000

    def serve(s, n):
        read_request_head(s)
        time.sleep(0.1)
        s.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: %d\r\n\r\n" % size + b"z" * sent)
        return False                      # the upload unread: a reset
    for splice in ("16384", "0"):
        with RawBackend(serve) as b, Tollgate(routes=[ROUTE + "=" + b.addr], workers=1,
                                              args=["--splice-min-body", splice]) as tg:
            data, reset = _upload_and_read(tg.port, 100000000, read_after=1.0)   # the answer waits in the kernel
            got = len(data)
            assert not reset, "reset after %d bytes (splice %s)" % (got, splice)
            line = wait_until(lambda: tg.access_log_lines(), 5, "an access log line")[-1]
            assert line.split()[5] == "413" and int(line.split()[7]) == got, (splice, line, got)
            assert got > 100000, (splice, got)  # the head and some of the body (the reset drops the rest)


def test_an_answer_before_the_body_ends_says_the_connection_closes():
    """The backend answers a POST after its head, before the body has all
    come: tollgate will end the connection after that answer, and says so
    with Connection: close (RFC 9112 §9.6), so that the client can stop
    sending a body nobody reads.  The answer to a request whose body had all
    come keeps the connection open: a second request on it is answered."""
    def serve(s, n):
        s.settimeout(3)
        data = b""
        while b"\r\n\r\n" not in data:
            d = s.recv(65536)
            if not d:
                return False
            data += d
        s.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
        time.sleep(2)
        return False
    with RawBackend(serve) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        s = socket.create_connection(("127.0.0.1", tg.port), timeout=5)
        s.sendall(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000000\r\n\r\n" + b"y" * 1000)
        got = b""
        while b"big!" not in got:
            d = s.recv(65536)
            assert d, got
            got += d
        s.close()
        head = got.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 413") and b"\r\nconnection: close" in head, got

    def keep(s, n):
        s.settimeout(3)
        data = b""
        for _ in range(2):
            while b"abc" not in data:
                d = s.recv(65536)
                if not d:
                    return False
                data += d
            data = data.split(b"abc", 1)[1]
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return False
    with RawBackend(keep) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        s = socket.create_connection(("127.0.0.1", tg.port), timeout=5)
        req = b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc"
        for i in range(2):
            s.sendall(req)
            got = b""
            while not got.endswith(b"ok"):
                d = s.recv(65536)
                assert d, (i, got)
                got += d
            assert b"connection: close" not in got.lower(), (i, got)
        s.close()


def _body_backend(got):
    """A raw backend that reads one chunked request to its end (the empty
    line after the last chunk), records it whole in got, and answers 200."""
    def serve(s, n):
        data = b""
        while b"\r\n0\r\n" not in data or not data.endswith(b"\r\n\r\n") or \
                data.count(b"\r\n\r\n") < 2:
            d = s.recv(65536)
            if not d:
                break
            data += d
        got.append(data)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        return False
    return serve


def test_request_trailers_are_dropped_and_the_body_arrives_whole():
    """A trailer field (X-Forwarded-For here) would reach a backend that
    merges trailers into the header section past tollgate's rewriting of the
    head: the section is dropped, the chunks and the final CRLF arrive, and
    every byte the client sent is counted in the access log."""
    got = []
    with RawBackend(_body_backend(got)) as b, \
            Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        req = (b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Forwarded-For\r\n"
               b"\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nX-Other: 1\r\n\r\n")
        out = _client(tg.port, req, wait=0.5)
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
        assert len(got) == 1, got
        head, _, body = got[0].partition(b"\r\n\r\n")
        assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", body
        assert b"6.6.6.6" not in got[0] and b"x-other" not in got[0].lower(), got[0]
        line = wait_until(lambda: tg.access_log_lines(), 3, "an access log line")[-1]
        assert line.split()[6] == str(len(req)), (len(req), line)


def test_a_chunk_size_longer_than_16_digits_is_refused():
    """Leading zeros past 16 hex digits: a backend that reads 64 bits of
    "00000000000000001" would see a last chunk where tollgate sees data."""
    got = []
    with RawBackend(_body_backend(got)) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"00000000000000001\r\nA\r\n0\r\n\r\n", wait=0.5)
        assert out.startswith(b"HTTP/1.1 400"), out[:200]
        assert all(b"\r\nA\r\n" not in g for g in got), got


def test_request_chunk_lines_follow_the_grammar_exactly():
    """A client's chunk lines are forwarded as sent, so each must mean one
    thing to every parser behind (RFC 9112 §7.1.1): whitespace ending a size
    line, an empty extension name or a broken quoted-string are 400; a
    well-formed extension crosses.  A backend's padding ("5 ") is accepted,
    as nginx and HAProxy accept it."""
    for line, ok in ((b"5 ", False), (b"5;", False), (b"5;a=\"b", False), (b"5;a b", False),
                     (b"5 ; a=b ; q=\"x;y\"", True)):
        got = []
        with RawBackend(_body_backend(got)) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
            out = _client(tg.port, b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   + line + b"\r\nhello\r\n0\r\n\r\n", wait=0.5)
            if ok:
                assert out.startswith(b"HTTP/1.1 200"), (line, out[:200])
                assert got and got[0].endswith(line + b"\r\nhello\r\n0\r\n\r\n"), (line, got)
            else:
                assert out.startswith(b"HTTP/1.1 400"), (line, out[:200])
                assert all(b"hello" not in g for g in got), (line, got)

    def padded(n, k, head):
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n"
    with ScriptBackend(padded) as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        out = _client(tg.port, b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n", wait=0.5)
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"5 \r\nhello\r\n0\r\n\r\n"), out
