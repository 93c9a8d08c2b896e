"""Message framing and bad input (issue 2, RFC 9112): bodies with every framing
pass through intact; every malformed request gets a 400-class answer and a
closed connection, never reaches the backend, and never stops the proxy."""

import json
import os
import random
import socket
import struct
import time

from tglib import *

ROUTE = "app.test"


def _tg(b, **kw):
    return Tollgate(routes=[ROUTE + "=" + b.addr], **kw)


def rejected(port, data, expect=(400,)):
    """Sends data; asserts a response with a status in expect, then a close."""
    with RawConn(port, timeout=5) as c:
        c.send(data)
        try:
            r = c.read_response()
        except EOFError:
            raise AssertionError("closed without a response for %r" % data[:120])
        assert r.status in expect, "got %d for %r (expected %s)" % (r.status, data[:120], expect)
        assert c.is_closed(3), "connection left open after a %d for %r" % (r.status, data[:120])
        return r


def backend_requests(b):
    status, _, body = http(b.port, "GET", "/stats", "x")
    return json.loads(body)["requests"] - 1   # minus this /stats request


def still_serving(port):
    status, _, body = http(port, "GET", "/bytes/10", ROUTE)
    assert status == 200 and body == pattern(10)


def test_chunked_request_body_forwarded():
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
            r = c.read_response()
            doc = json.loads(r.body)
            assert doc["body_length"] == 11, doc
            import hashlib
            assert doc["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
            # the connection stays usable after a chunked body with trailers
            c.send(b"GET /bytes/5 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            assert c.read_response().body == pattern(5)


def test_chunked_request_split_everywhere():
    body = b"".join(b"%x\r\n%s\r\n" % (n, b"z" * n) for n in (1, 15, 16, 255, 4096)) + b"0\r\n\r\n"
    data = b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            pos = 0
            rnd = random.Random(7)
            while pos < len(data):
                n = rnd.randint(1, 9)
                c.send(data[pos:pos + n])
                pos += n
                if rnd.random() < 0.1:
                    time.sleep(0.01)
            r = c.read_response()
            assert json.loads(r.body)["body_length"] == 1 + 15 + 16 + 255 + 4096


def test_response_framings_to_http11_client():
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /chunked/10000?chunks=10 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.body == pattern(10000)
            c.send(b"GET /bytes/10000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.framing == "length" and r.body == pattern(10000)
            # close-delimited from the backend: re-framed as chunked, as nginx
            # does, and the client's connection lives on
            for path, n in (("/close/20000", 20000), ("/close/300000?v=1.0", 300000), ("/close/0", 0)):
                c.send(b"GET %s HTTP/1.1\r\nHost: app.test\r\n\r\n" % path.encode())
                r = c.read_response()
                assert r.framing == "chunked" and r.header("Connection") is None, (path, r.framing, r.headers)
                assert r.body == pattern(n), (path, len(r.body))
            c.send(b"GET /bytes/3 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            assert c.read_response().body == pattern(3)


def test_backend_http10_close_delimited():
    with Backend("b1") as b, _tg(b) as tg:
        status, _, body = http(tg.port, "GET", "/close/30000?v=1.0", ROUTE)
        assert status == 200 and body == pattern(30000)


def test_close_delimited_answer_to_an_http10_client_stays_close_delimited():
    """An HTTP/1.0 client cannot read chunked (RFC 9112 §7): it gets the body
    as the backend sent it, ended by the close."""
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /close/50000 HTTP/1.0\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.version == "HTTP/1.0" and r.framing == "close", (r.version, r.framing)
            assert r.body == pattern(50000) and c.is_closed(3)


def _close_delimited_then(fail):
    """A backend answering with a close-delimited body: 5000 bytes, then
    fail(s) ends the exchange."""
    def serve(s, n):
        read_request_head(s)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 5000)
        time.sleep(0.2)
        return fail(s)
    return serve


def test_close_delimited_body_the_backend_resets_shows_as_cut():
    """The backend resets the connection mid-body: the client gets the bytes
    sent, then the close without the last chunk -- a cut it can see.  Relayed
    close-delimited, the reset body looked complete."""
    def rst(s):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False
    with RawBackend(_close_delimited_then(rst)) as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /stream HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_head()
            assert r.status == 200 and r.header("Transfer-Encoding") == "chunked", r.headers
            rest = c.read_to_eof()
            assert rest.startswith(b"1388\r\n" + b"x" * 5000 + b"\r\n"), rest[:40]
            assert not rest.endswith(b"0\r\n\r\n"), "a reset body ended with the last chunk"


def test_close_delimited_body_that_times_out_shows_as_cut():
    """The backend falls silent mid-body past --upstream-read-timeout: the
    client sees the connection close without the last chunk."""
    def hang(s):
        return True   # held open, silent
    with RawBackend(_close_delimited_then(hang)) as b, \
            _tg(b, args=["--upstream-read-timeout", "1"]) as tg:
        with RawConn(tg.port, timeout=scale(10)) as c:
            c.send(b"GET /stream HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_head()
            assert r.header("Transfer-Encoding") == "chunked", r.headers
            rest = c.read_to_eof()
            assert rest == b"1388\r\n" + b"x" * 5000 + b"\r\n", rest[-40:]


def test_close_delimited_stream_reaches_the_client_as_it_comes():
    """Each piece a close-delimited backend sends goes out at once as its own
    chunk (an LLM's tokens over an HTTP/1.0-style stream)."""
    go = []

    def serve(s, n):
        read_request_head(s)
        s.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        for i in range(3):
            s.sendall(b"data: token %d\n\n" % i)
            deadline = time.monotonic() + 5
            while len(go) <= i and time.monotonic() < deadline:
                time.sleep(0.01)
        return False
    with RawBackend(serve) as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /events HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_head()
            assert r.header("Transfer-Encoding") == "chunked"
            for i in range(3):
                piece = b"data: token %d\n\n" % i
                got = c.read_exact(len(piece) + 5)
                assert got == b"%x\r\n" % len(piece) + piece + b"\r\n", got
                go.append(i)
            assert c.read_exact(5) == b"0\r\n\r\n"


def test_both_content_length_and_transfer_encoding():
    with Backend("b1") as b, _tg(b) as tg:
        rejected(tg.port, b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n")
        assert backend_requests(b) == 0
        still_serving(tg.port)


def test_differing_duplicate_content_length():
    with Backend("b1") as b, _tg(b) as tg:
        rejected(tg.port, b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
                          b"Content-Length: 6\r\n\r\nhello!")
        rejected(tg.port, b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5, 6\r\n\r\nhello!")
        assert backend_requests(b) == 0


def test_a_content_length_list_of_equal_values_is_forwarded_as_one():
    """RFC 9110 §8.6: a recipient that takes "5, 5" (or the field repeated)
    as one length must forward one value; a strict backend (Node's llhttp)
    rejected the list tollgate passed on, and the client got its 400."""
    with Backend("b1") as b, _tg(b) as tg:
        for cl in (b"Content-Length: 5, 5\r\n", b"Content-Length: 5\r\ncontent-length: 05\r\n"):
            with RawConn(tg.port) as c:
                c.send(b"POST /echo HTTP/1.1\r\nHost: app.test\r\n" + cl + b"\r\nhello")
                r = c.read_response()
                assert r.status == 200, r
                e = json.loads(r.body)
                lengths = [v for k, v in e["headers"] if k.lower() == "content-length"]
                assert lengths == ["5"] and e["body_length"] == 5, (cl, lengths, e["body_length"])

    with one_shot_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc",
                          hold=0.2) as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.header_all("content-length") == ["3"] and r.body == b"abc", r.headers


def test_malformed_content_length():
    with Backend("b1") as b, _tg(b) as tg:
        for v in (b"-1", b"+5", b"5x", b"0x10", b"", b"99999999999999999999999"):
            rejected(tg.port, b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: " + v +
                              b"\r\n\r\nhello")
        assert backend_requests(b) == 0


def test_invalid_chunk_sizes():
    with Backend("b1") as b, _tg(b) as tg:
        for chunk in (b"zz\r\nhello\r\n0\r\n\r\n", b"-5\r\nhello\r\n0\r\n\r\n",
                      b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n",
                      b" \r\nhello\r\n0\r\n\r\n"):
            with RawConn(tg.port, timeout=5) as c:
                c.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk)
                # the head was fine and may already be on its way; the bad
                # framing must end the exchange: a 400 (or a 502 if the
                # backend was already answering) and a close, never a hang
                try:
                    r = c.read_response()
                    assert r.status in (400, 502), (chunk, r)
                except EOFError:
                    pass
                assert c.is_closed(3), chunk
        still_serving(tg.port)


def test_bad_transfer_encodings():
    with Backend("b1") as b, _tg(b) as tg:
        rejected(tg.port, b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                 expect=(400, 501))
        rejected(tg.port, b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip\r\n\r\n",
                 expect=(400, 501))
        assert backend_requests(b) == 0


def test_ctl_characters_in_header_value():
    with Backend("b1") as b, _tg(b) as tg:
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\x00b\r\n\r\n")
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\rb\r\n\r\n")
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\x01b\r\n\r\n")
        assert backend_requests(b) == 0


def test_whitespace_before_colon():
    with Backend("b1") as b, _tg(b) as tg:
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A : 1\r\n\r\n")
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost : app.test\r\n\r\n")
        rejected(tg.port, b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n")
        assert backend_requests(b) == 0


def test_obs_fold_rejected():
    with Backend("b1") as b, _tg(b) as tg:
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: 1\r\n  continued\r\n\r\n")
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: 1\r\n\tcontinued\r\n\r\n")
        assert backend_requests(b) == 0


def test_header_section_too_large():
    with Backend("b1") as b, _tg(b) as tg:
        big = b"X-Big: " + b"a" * 70000 + b"\r\n"
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\r\n" + big + b"\r\n", expect=(431,))
        many = b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(4000))   # ~50 KiB, many fields
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\r\n" + many + b"\r\n", expect=(431,))
        # a head that never ends: 431 as soon as the limit is passed, not a wait
        with RawConn(tg.port, timeout=5) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"b" * 80000)
            r = c.read_response()
            assert r.status == 431
        assert backend_requests(b) == 0
        still_serving(tg.port)


def test_header_just_under_limit_passes():
    with Backend("b1") as b, _tg(b) as tg:
        big = b"X-Big: " + b"a" * 60000 + b"\r\n"
        with RawConn(tg.port) as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: app.test\r\n" + big + b"\r\n")
            r = c.read_response()
            assert r.status == 200
            doc = json.loads(r.body)
            assert ["X-Big", "a" * 60000] in doc["headers"]


def test_bad_request_lines():
    with Backend("b1") as b, _tg(b) as tg:
        for line in (b"GET\r\n", b"GET /\r\n", b"GET / HTTP/1.1 extra\r\n", b"G(T / HTTP/1.1\r\n",
                     b"GET /a b HTTP/1.1\r\n", b"GET / HTTX/1.1\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",
                     b"GET /\x7f HTTP/1.1\r\n", b"GET / HTTP/1.1\n"):
            rejected(tg.port, line + b"Host: app.test\r\n\r\n", expect=(400, 505))
        assert backend_requests(b) == 0
        still_serving(tg.port)


def test_unsupported_http_version():
    with Backend("b1") as b, _tg(b) as tg:
        rejected(tg.port, b"GET / HTTP/2.0\r\nHost: app.test\r\n\r\n", expect=(505,))
        # a later 1.x is read as 1.1 (RFC 9110 §2.5), as nginx and HAProxy do
        with RawConn(tg.port) as c:
            c.send(b"GET /echo HTTP/1.2\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and r.version == "HTTP/1.1", r
            assert json.loads(r.body)["version"] == "HTTP/1.1"
            c.send(b"GET /bytes/3 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            assert c.read_response().body == pattern(3)


def test_host_header_rules():
    with Backend("b1") as b, _tg(b) as tg:
        rejected(tg.port, b"GET / HTTP/1.1\r\n\r\n")                                   # missing
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n")   # twice
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app test\r\n\r\n")                 # invalid
        assert backend_requests(b) == 0


def test_bare_lf_line_endings_rejected():
    with Backend("b1") as b, _tg(b) as tg:
        rejected(tg.port, b"GET / HTTP/1.1\nHost: app.test\n\n")
        rejected(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\nX-A: 1\r\n\r\n")


def test_garbage_does_not_break_the_proxy():
    rnd = random.Random(1234)
    with Backend("b1") as b, _tg(b) as tg:
        for i in range(150):
            kind = i % 3
            if kind == 0:
                data = os.urandom(rnd.randint(1, 3000))
            elif kind == 1:   # a valid request with random bytes flipped
                base = bytearray(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
                                 b"Content-Type: a\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                for _ in range(rnd.randint(1, 4)):
                    base[rnd.randrange(len(base))] = rnd.randrange(256)
                data = bytes(base)
            else:             # valid request truncated anywhere
                base = b"GET /bytes/10 HTTP/1.1\r\nHost: app.test\r\nX-A: 1\r\n\r\n"
                data = base[:rnd.randrange(len(base))]
            with socket.create_connection(("127.0.0.1", tg.port), timeout=5) as s:
                try:
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(3)
                    while s.recv(65536):
                        pass
                except (ConnectionResetError, BrokenPipeError):
                    pass
                except socket.timeout:
                    raise AssertionError("no answer and no close within 3 s for %r" % data[:100])
        assert tg.running()
        still_serving(tg.port)


def test_rejection_counted_in_access_log():
    """A rejected head is logged with the bytes read of it as its bytes in
    (they were 0), and counted in tollgate_bytes_total."""
    with Backend("b1") as b, _tg(b) as tg:
        before = tg.metrics().get('tollgate_bytes_total{direction="in"}', 0)
        bad = b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A : 1\r\n\r\n"
        rejected(tg.port, bad)
        line = wait_until(lambda: [l for l in tg.access_log_lines() if " 400 " in l], 3,
                          "a 400 in the access log")[0]
        assert line.split()[6] == str(len(bad)), line
        assert tg.metrics()['tollgate_bytes_total{direction="in"}'] - before == len(bad)


def test_a_rejected_head_counts_its_own_bytes_not_what_came_after_it():
    """A head refused after it was read whole (differing Content-Lengths:
    400) is billed for its own bytes: not for the body or the pipelined
    request that arrived in the same read -- they are never read as such
    (docs/metering.md)."""
    with Backend("b1") as b, _tg(b) as tg:
        before = tg.metrics().get('tollgate_bytes_total{direction="in"}', 0)
        head = b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        rejected(tg.port, head + b"hello" + b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        line = wait_until(lambda: [l for l in tg.access_log_lines() if " 400 " in l], 3,
                          "a 400 in the access log")[0]
        assert line.split()[6] == str(len(head)), (line, len(head))
        assert tg.metrics()['tollgate_bytes_total{direction="in"}'] - before == len(head)


def test_a_204_reaches_the_client_without_content_length():
    """A backend's 204 with Content-Length (which RFC 9110 §8.6 forbids) goes
    to the client without it, as nginx sends it; the body bytes it sent
    after it are not forwarded, and the next request is answered."""
    with one_shot_backend(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: 1\r\n\r\nhello",
                          hold=0.2) as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.status == 204 and r.header("x-kept") == "1", r
            assert r.header("content-length") is None, r
            c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.status == 204 and r.body == b"", r


def test_bad_response_from_backend_gives_502():
    """A backend answering garbage is the backend's fault: 502, not a crash."""
    answers = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
               b"NOT HTTP AT ALL\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n")

    def serve(s, n):
        s.recv(65536)
        s.sendall(answers[n % len(answers)])
        time.sleep(0.2)

    with RawBackend(serve) as b, Tollgate(routes=["bad.test=" + b.addr]) as tg:
        for _ in range(3):
            status, _, _ = http(tg.port, "GET", "/", "bad.test")
            assert status == 502, status
