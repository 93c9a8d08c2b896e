"""Error answers (issue 2 / contract "Status codes"): unknown host 404, backend
refused or reset before the response 502, backend timeout 504, each a small
clear page; a backend failing mid-response cuts the client connection."""

import email.utils
import os
import subprocess
import re
import socket
import struct
import time

from tglib import *


def _closed_port():
    return free_port()   # nothing listens there


def check_page(status, headers, body, code):
    assert status == code, (status, body[:200])
    assert 0 < len(body) < 4096, "error page of %d bytes" % len(body)
    assert str(code).encode() in body, body
    assert headers.get("content-type", "").startswith("text/"), headers
    assert int(headers.get("content-length", len(body))) == len(body)
    # RFC 9110 §6.6.1: an origin with a clock sends Date (tollgate is the
    # origin of its own pages); an IMF-fixdate of about now
    date = headers.get("date", "")
    t = email.utils.parsedate_to_datetime(date).timestamp() if date else 0
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", date) and abs(t - time.time()) < 5, \
        headers


def test_unknown_host_404():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        status, headers, body = http(tg.port, "GET", "/", "nope.test")
        check_page(status, headers, body, 404)
        # the connection is kept after a 404 (the request was well-formed)
        with RawConn(tg.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: nope.test\r\n\r\n")
            assert c.read_response().status == 404
            c.send(b"GET /bytes/3 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and r.body == pattern(3)


def test_unknown_host_404_with_request_body():
    # the body of a request that goes nowhere is skipped, the next request is in sync
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        with RawConn(tg.port) as c:
            c.send(b"POST / HTTP/1.1\r\nHost: nope.test\r\nContent-Length: 20\r\n\r\n"
                   b"GET /x HTTP/1.1\r\n\r\n\r\n"
                   b"GET /bytes/3 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            assert c.read_response().status == 404
            try:
                r = c.read_response()
            except EOFError:
                return   # closing after an unread body is allowed too
            assert r.status == 200 and r.body == pattern(3), r


def test_backend_refused_502():
    with Tollgate(routes=["app.test=127.0.0.1:%d" % _closed_port()]) as tg:
        status, headers, body = http(tg.port, "GET", "/", "app.test")
        check_page(status, headers, body, 502)


def test_backend_reset_before_response_502():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        for path in ("/reset", "/reset?rst=1"):
            status, headers, body = http(tg.port, "POST", path, "app.test", body=b"x" * 10)
            check_page(status, headers, body, 502)
        # nothing is stuck: the next request works
        assert http(tg.port, "GET", "/bytes/5", "app.test")[2] == pattern(5)


def test_backend_timeout_504():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr],
                                      args=["--upstream-read-timeout", "1"]) as tg:
        t0 = time.monotonic()
        status, headers, body = http(tg.port, "GET", "/sleep/5", "app.test")
        took = time.monotonic() - t0
        check_page(status, headers, body, 504)
        assert 0.8 < took < scale(3.5), "504 after %.2fs with a 1 s read timeout" % took


def test_upstream_connect_timeout_504():
    """A backend that accepts nothing (listen queue full) times out on connect."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    try:
        # fill the accept queue so that further SYNs are dropped
        for _ in range(16):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        time.sleep(0.2)
        with Tollgate(routes=["app.test=127.0.0.1:%d" % port],
                      args=["--upstream-connect-timeout", "1"]) as tg:
            t0 = time.monotonic()
            status, headers, body = http(tg.port, "GET", "/", "app.test", timeout=15)
            took = time.monotonic() - t0
            assert status in (502, 504), status
            assert took < scale(4), "answered after %.2fs with a 1 s connect timeout" % took
    finally:
        for s in fillers:
            s.close()
        srv.close()


def test_backend_dies_mid_response():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /truncate/100000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_head()
            assert r.status == 200 and r.header("content-length") == "100000"
            got = c.read_to_eof()
            # the client must see the truncation (a closed connection), never a hang
            assert len(got) < 100000
            assert got == pattern(len(got))


def test_backend_dies_mid_chunked_response():
    # a chunked response cut by the backend must not be completed with a last-chunk
    def serve(s, n):
        s.recv(65536)
        s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.3)

    with RawBackend(serve) as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        out = raw(tg.port, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n", timeout=5)
        assert out.startswith(b"HTTP/1.1 200"), out
        assert not out.endswith(b"0\r\n\r\n"), "truncated response completed: %r" % out


def test_backend_status_codes_pass_through():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        for code in (201, 204, 301, 304, 400, 404, 418, 500, 503):
            status, headers, body = http(tg.port, "GET", "/status/%d" % code, "app.test")
            assert status == code
            assert headers.get("x-backend") == "b1"


def test_errors_in_metrics_and_log():
    with Tollgate(routes=["app.test=127.0.0.1:%d" % _closed_port()]) as tg:
        for _ in range(3):
            assert http(tg.port, "GET", "/", "app.test")[0] == 502
        wait_until(lambda: sum(1 for l in tg.access_log_lines() if " 502 " in l) >= 3, 3,
                   "three 502 lines in the access log")
        status, _, body = tg.admin("/metrics")
        assert status == 200
        assert b"5xx" in body, body[:2000]


def test_backend_response_head_too_large_502():
    with one_shot_backend(b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 100000 + b"\r\nContent-Length: 2\r\n\r\nok") as b:
        with Tollgate(routes=["app.test=" + b.addr]) as tg:
            status, headers, body = http(tg.port, "GET", "/", "app.test")
            check_page(status, headers, body, 502)


def test_backend_interim_103_then_final_response():
    with one_shot_backend(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as b:
        with Tollgate(routes=["app.test=" + b.addr]) as tg:
            with RawConn(tg.port) as c:
                c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
                r = c.read_response()       # a forwarded 103 is skipped here
                assert r.status == 200 and r.body == b"ok", r


def test_expect_100_continue_to_unknown_host():
    # no route: the final 404 comes at once, without a 100 and without waiting for the body
    with Tollgate() as tg:
        with RawConn(tg.port) as c:
            c.send(b"POST /upload HTTP/1.1\r\nHost: nope.test\r\nContent-Length: 100000\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            r = c.read_response(skip_1xx=False)
            assert r.status == 404, r


def test_http10_request_without_host_is_told_so():
    """HTTP/1.0 may omit Host; tollgate routes by host name, so it answers 400
    saying the Host is missing (not that it is malformed)."""
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        resp = raw(tg.port, b"GET /a HTTP/1.0\r\n\r\n")
        assert resp.startswith(b"HTTP/1.0 400"), resp[:100]
        assert b"no Host header" in resp, resp
        resp = raw(tg.port, b"GET /a HTTP/1.0\r\nHost: a..b\r\n\r\n")
        assert resp.startswith(b"HTTP/1.0 400") and b"not a valid host name" in resp, resp


def test_a_restarted_backend_is_served_again_without_an_error_from_stale_connections():
    """The backend goes away while tollgate holds pooled connections to it:
    requests meanwhile get a quick 502 (no hang), and once it is back on the
    same address every request succeeds -- no stale pooled connection shows
    through as an error."""
    port = free_port()
    b = Backend("first", port=port)
    try:
        with Tollgate(routes=["app.test=" + b.addr], workers=1) as tg:
            with_conns = [RawConn(tg.port) for _ in range(4)]    # four pooled backend connections
            for c in with_conns:
                c.send(b"GET /sleep/0.2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            for c in with_conns:
                assert c.read_response().status == 200
            b.stop()
            t0 = time.time()
            status, headers, body = http(tg.port, "GET", "/echo", "app.test")
            check_page(status, headers, body, 502)
            assert time.time() - t0 < scale(3)
            b = Backend("second", port=port)
            for c in with_conns:                 # old client connections, new backend
                c.send(b"GET /bytes/100 HTTP/1.1\r\nHost: app.test\r\n\r\n")
                r = c.read_response()
                assert r.status == 200 and r.header("x-backend") == "second" and r.body == pattern(100), r.status
                c.close()
            for i in range(10):
                status, headers, body = http(tg.port, "GET", "/bytes/%d" % i, "app.test")
                assert status == 200 and headers["x-backend"] == "second" and body == pattern(i)
    finally:
        b.stop()


def test_endless_interim_responses_end_in_502():
    """A backend that sends 103 Early Hints without end never answers: after
    32 interim responses it is taken as broken (502), both for an HTTP/1.1
    client (which gets the interim heads first) and for an HTTP/1.0 one
    (which gets none of them, and would otherwise wait forever, as each head
    restarts the backend read timeout)."""
    import threading
    stop = threading.Event()

    def serve(s, n):
        read_request_head(s)
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" * 64
        try:
            while not stop.is_set():
                s.sendall(hints)
        except OSError:
            pass

    try:
        with RawBackend(serve) as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
            with RawConn(tg.port) as c:
                c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
                interims = 0
                r = c.read_response(skip_1xx=False)
                while r.status == 103 and interims < 1000:
                    interims += 1
                    r = c.read_response(skip_1xx=False)
                assert r.status == 502 and interims <= 32, "%d interim heads, then %d" % (interims, r.status)
                assert c.is_closed()
            resp = raw(tg.port, b"GET / HTTP/1.0\r\nHost: app.test\r\n\r\n", timeout=scale(5))
            assert resp.startswith(b"HTTP/1.0 502"), resp[:200]
            assert b"interim" in resp, resp
    finally:
        stop.set()


def test_interim_heads_wait_for_a_client_that_does_not_read():
    """Interim heads queue for the client as a body does: while the client
    reads nothing, the proxy stops reading the backend at the watermark
    instead of taking every head (24 heads of 1 MB here, allowed by
    --max-header-size 1 MiB: about 20 MB held without the pause); once the
    client reads, every head and then the response arrive."""
    n_heads = 24
    fields = b"".join(b"X-Hint-%03d: %s\r\n" % (i, b"h" * 9980) for i in range(100))
    hint = b"HTTP/1.1 103 Early Hints\r\n" + fields + b"\r\n"

    def serve(s, n):
        read_request_head(s)
        s.settimeout(60)
        s.sendall(hint * n_heads + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    args = ["--max-header-size", str(1 << 20), "--buffer-size", str(1 << 20)]
    with RawBackend(serve) as b, Tollgate(routes=["app.test=" + b.addr], args=args, workers=1) as tg:
        time.sleep(0.2)
        base = tg.rss_kb()
        with RawConn(tg.port, timeout=30) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            with RssSampler(tg.pid) as rss:
                time.sleep(2)           # read nothing
            growth = rss.max_kb - base
            print("%d interim heads of %d bytes unread: RSS base %d KiB, growth %d KiB"
                  % (n_heads, len(hint), base, growth))
            if not SANITIZED:
                assert growth < 8 * 1024, "proxy held %d KiB of interim heads for a client not reading" % growth
            for i in range(n_heads):
                r = c.read_response(skip_1xx=False)
                assert r.status == 103 and len(r.raw) == len(hint), (i, r.status, len(r.raw))
            r = c.read_response()
            assert r.status == 200 and r.body == b"ok", r


def test_cap_page_edited_in_place_is_served_after_a_reload():
    """cap-page is read once per configuration, not per capped request: a
    page edited in place (same path, same config text) is served after a
    SIGHUP, and again after a second edit and reload."""
    import os
    import signal
    from http.client import HTTPException
    with Redis() as r, Backend("b1") as b:
        r.cmd("HSET", "tg:domain:cap.test", "tenant", "capt", "backends", b.addr)
        r.cmd("HSET", "tg:tenant:capt", "cap_bytes", "100", "cap_action", "block")
        r.cmd("HSET", "tg:meter:capt:" + time.strftime("%Y%m", time.gmtime()), "bytes_in", "0",
              "bytes_out", "100000")
        page = os.path.join(tmpdir(), "cap.html")

        def edit(text):
            with open(page, "w") as f:      # in place: same file, same inode
                f.write(text)

        edit("<p>first page</p>\n")
        with Tollgate(redis=r.url, config="cap-page %s\n" % page, workers=1) as tg:
            def capped_body():
                try:
                    status, _, body = http(tg.port, "GET", "/echo", "cap.test")
                except (OSError, HTTPException):
                    return None
                return body if status == 509 else None

            assert wait_until(capped_body, scale(5), "a 509 with the cap page") == b"<p>first page</p>\n"
            edit("<p>second page</p>\n")
            assert capped_body() == b"<p>first page</p>\n", "the cap page is read per request"
            tg.signal(signal.SIGHUP)
            wait_until(lambda: capped_body() == b"<p>second page</p>\n", scale(5), "the edited page after SIGHUP")
            edit("<p>third page</p>\n")
            tg.signal(signal.SIGHUP)
            wait_until(lambda: capped_body() == b"<p>third page</p>\n", scale(5), "the page edited again after SIGHUP")


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_used_up_descriptors_pause_accepting_instead_of_spinning():
    """Out of file descriptors, accept() fails (EMFILE) and the connection
    stays in the backlog, so the listener stays readable: left armed, it
    spun on accept() at a whole core for as long as that lasted.  tollgate
    rests its listeners 100 ms at a time instead (as nginx does), logs a
    few lines, not one per try, and serves the waiting client as soon as
    descriptors are free again."""
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr], workers=1) as tg:
        assert http(tg.port, "GET", "/bytes/10", "app.test")[0] == 200   # one pooled backend connection
        time.sleep(0.3)
        fds = len(os.listdir("/proc/%d/fd" % tg.pid))
        subprocess.run(["prlimit", "--pid", str(tg.pid), "--nofile=%d:" % (fds + 3)], check=True)
        fillers = []
        for _ in range(3):               # each a started head: accepted, held (header timeout 10 s)
            s = socket.create_connection(("127.0.0.1", tg.port))
            s.sendall(b"GET /bytes/5 HTTP/1.1\r\n")
            fillers.append(s)
        time.sleep(0.3)
        waiter = RawConn(tg.port, timeout=10)
        waiter.send(b"GET /bytes/7 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        time.sleep(0.3)
        cpu0, t0 = _cpu_seconds(tg.pid), time.time()
        time.sleep(2)
        used = (_cpu_seconds(tg.pid) - cpu0) / (time.time() - t0)
        assert used < 0.3, "%.0f%% of a core while no descriptor was free" % (used * 100)
        for s in fillers:
            s.close()
        r = waiter.read_response()
        assert r.status == 200 and r.body == pattern(7), (r.status, r.body[:100])
        waiter.close()
        lines = [l for l in tg.log_text().splitlines() if "accept" in l]
        # (Under valgrind, whose own descriptor limit sits below the one set
        # here, accept() succeeds and valgrind closes the socket: no EMFILE
        # reaches tollgate, so there is nothing to log.)
        assert len(lines) <= 5 and (lines or WRAPPER), lines[:10]


def test_listen_backlog_holds_thousands_of_waiting_connections():
    """While tollgate cannot accept (descriptors used up), connecting
    clients wait in the listener's accept queue, which is the 4096 (or the
    kernel's somaxconn, if lower) asked for: libevent's evconnlistener,
    given -1, called listen() again with 128, so the 130th client's SYN was
    dropped and it saw a connect timeout."""
    import select
    n = 400
    with open("/proc/sys/net/core/somaxconn") as f:
        room = min(n, int(f.read()))
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr], workers=1,
                                      args=["--defer-accept", "0"]) as tg:
        assert http(tg.port, "GET", "/bytes/10", "app.test")[0] == 200
        time.sleep(0.3)
        fds = len(os.listdir("/proc/%d/fd" % tg.pid))
        subprocess.run(["prlimit", "--pid", str(tg.pid), "--nofile=%d:" % fds], check=True)
        socks = []
        try:
            for _ in range(n):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", tg.port))
                socks.append(s)
            deadline = time.time() + scale(2)
            pending = list(socks)
            while pending and time.time() < deadline:
                _, w, _ = select.select([], pending, [], 0.2)
                pending = [s for s in pending if s not in w]
            connected = sum(1 for s in socks if s not in pending
                            and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
            assert connected >= room - 2, "%d of %d connections completed (room for %d)" % (connected, n, room)
        finally:
            for s in socks:
                s.close()


def test_a_connect_that_fails_at_once_is_logged_with_its_reason():
    """A connect(2) that fails before any packet leaves (an unreachable
    network, no free local port) answers 502 and says why in the error log,
    as a refused connect does -- it was silent, its errno lost."""
    with Tollgate(routes=["app.test=255.255.255.255:80"], workers=1) as tg:
        assert http(tg.port, "GET", "/", "app.test")[0] == 502
        wait_until(lambda: "connect to 255.255.255.255:80 failed: " in tg.log_text(), 3,
                   "the failed connect in the error log")
        assert tg.metrics()['tollgate_upstream_errors_total{kind="connect"}'] == 1


def test_upstream_errors_count_cut_bodies_but_not_stale_pooled_retries():
    """tollgate_upstream_errors_total{kind="reset"} counts a backend that
    closes mid-body (copied and spliced bodies alike), and does not count a
    pooled connection found closed and retried on a fresh one: that request
    is answered 200, nothing failed."""
    def cut(s, n):
        read_request_head(s)
        size = 100 if n == 0 else 100000     # copied, then spliced (over 16 KiB)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * (size // 2))
        time.sleep(0.1)
        return False
    with RawBackend(cut) as b, Tollgate(routes=["app.test=" + b.addr], workers=1) as tg:
        for _ in range(2):
            with RawConn(tg.port) as c:
                c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
                assert c.read_head().status == 200
                c.read_to_eof()
        wait_until(lambda: tg.metrics()['tollgate_upstream_errors_total{kind="reset"}'] == 2, 3,
                   "two resets counted")

    def second_dropped(s, n):
        read_request_head(s)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if n == 0:
            read_request_head(s)      # the pooled connection's next request: dropped unanswered
        return False
    with RawBackend(second_dropped) as b, Tollgate(routes=["app.test=" + b.addr], workers=1) as tg:
        with RawConn(tg.port) as c:
            for _ in range(2):
                c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
                r = c.read_response()
                assert r.status == 200 and r.body == b"ok", r
        m = tg.metrics()
        assert m["tollgate_upstream_reused_total"] == 1, m
        assert m['tollgate_upstream_errors_total{kind="reset"}'] == 0, m


def _hung_backend():
    """A backend that accepts and reads, and never answers (held open)."""
    return RawBackend(lambda s, n: (read_request_head(s), True)[1], backlog=64)


def test_a_backend_that_fails_before_answering_is_skipped_for_the_cooldown():
    """A backend that accepts connections and then hangs (or resets) gets
    the requests' 504 (502) once per worker, then the cooldown takes it
    out, as nginx's max_fails=1: only refused connects cooled a backend,
    and round robin kept sending it every other request, each waiting for
    the read timeout."""
    def reset(s, n):
        read_request_head(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False
    for bad_backend, status in ((_hung_backend, 504), (lambda: RawBackend(reset, backlog=64), 502)):
        with Backend("good") as good, bad_backend() as bad, \
                Tollgate(routes=["app.test=%s,%s" % (bad.addr, good.addr)], workers=1,
                         args=["--upstream-read-timeout", "1", "--backend-cooldown", "60"]) as tg:
            got = [http(tg.port, "GET", "/bytes/3", "app.test", timeout=scale(10))[0] for _ in range(8)]
            assert got.count(status) <= 1 and got.count(200) >= 7, got
            # POST too: not resent after it went out, but the next ones go elsewhere
            got = [http(tg.port, "POST", "/upload", "app.test", body=b"x")[0] for _ in range(4)]
            assert got == [200] * 4, got


def test_every_backend_of_a_route_is_tried_before_a_502():
    """Ten backends that refuse and one that answers, with no cooldown:
    each request walks past all ten to the eleventh (nginx tries every
    peer); at most 8 were tried and a 502 came while one was healthy."""
    refused = []
    for _ in range(10):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        refused.append(s)   # bound, not listening: connects are refused
    try:
        with Backend("good") as good:
            backends = ",".join(["127.0.0.1:%d" % s.getsockname()[1] for s in refused] + [good.addr])
            with Tollgate(routes=["app.test=" + backends], workers=1, args=["--backend-cooldown", "0"]) as tg:
                got = [http(tg.port, "GET", "/bytes/3", "app.test")[0] for _ in range(12)]
                assert got == [200] * 12, got
    finally:
        for s in refused:
            s.close()


def test_out_of_descriptors_for_a_backend_connection_frees_idle_ones_and_blames_no_backend():
    """connect() failing with EMFILE is tollgate's shortage, not the
    backend's: idle pooled connections (to another backend) are closed to
    free descriptors and the request goes through; the backend is not
    cooled down nor counted as an upstream error (it was a 502, a connect
    error and a cooldown)."""
    with Backend("b1") as b1, Backend("b2") as b2, \
            Tollgate(routes=["app.test=" + b1.addr, "other.test=" + b2.addr], workers=1) as tg:
        # idle pooled connections to b2: concurrent requests leave them behind
        conns = [RawConn(tg.port) for _ in range(4)]
        for c in conns:
            c.send(b"GET /sleep/0.3 HTTP/1.1\r\nHost: other.test\r\n\r\n")
        for c in conns:
            assert c.read_response().status == 200
        for c in conns:
            c.close()
        time.sleep(0.3)
        # Room for the client's socket, not for a new backend connection: a
        # descriptor's number must be below the limit, so the gaps below the
        # highest one in use are filled first (clients that began a request
        # head, held by tollgate), then the limit is the highest + 2: one
        # number for the client; the pooled ones, below it, free theirs.
        if WRAPPER:
            raise Skip("valgrind holds descriptors of its own, high above the limit set here")

        def fds():
            return {int(x) for x in os.listdir("/proc/%d/fd" % tg.pid)}
        fillers = []
        for _ in range(2 * len(fds())):
            used = fds()
            if len([n for n in range(max(used)) if n not in used]) == 0:
                break
            s = socket.create_connection(("127.0.0.1", tg.port))
            s.sendall(b"GET /bytes/5 HTTP/1.1\r\n")
            fillers.append(s)
            wait_until(lambda: len(fds()) > len(used), scale(5), "the filler accepted")
        used = fds()
        assert all(n in used for n in range(max(used))), sorted(used)
        subprocess.run(["prlimit", "--pid", str(tg.pid), "--nofile=%d:" % (max(used) + 2)], check=True)
        with RawConn(tg.port) as c:
            c.send(b"GET /bytes/5 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
        for s in fillers:
            s.close()
        assert r.status == 200 and r.body == pattern(5), r
        assert "out of file descriptors connecting" in tg.log_text()
        assert tg.metrics()['tollgate_upstream_errors_total{kind="connect"}'] == 0
