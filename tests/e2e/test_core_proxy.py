"""Core proxying (issue 2): requests reach the routed backend and come back
intact; keep-alive, pipelining, HTTP/1.0 clients, HEAD, host normalisation,
balancing over a static route's backends and the upstream connection pool."""

import json
import socket
import time

from tglib import *


def test_get_through_proxy():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        status, headers, body = http(tg.port, "GET", "/echo?x=1&y=2", "app.test")
        assert status == 200, (status, body)
        assert headers["x-backend"] == "b1"
        doc = json.loads(body)
        assert doc["method"] == "GET"
        assert doc["target"] == "/echo?x=1&y=2"
        assert doc["body_length"] == 0


def test_post_body_forwarded_exactly():
    payload = bytes(range(256)) * 1000
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        status, _, body = http(tg.port, "POST", "/echo", "app.test", body=payload,
                               headers={"Content-Type": "application/octet-stream"})
        assert status == 200
        doc = json.loads(body)
        assert doc["method"] == "POST"
        assert doc["body_length"] == len(payload)
        import hashlib
        assert doc["body_sha256"] == hashlib.sha256(payload).hexdigest()


def test_response_bodies_intact():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        for path, n in (("/bytes/0", 0), ("/bytes/1", 1), ("/bytes/100000", 100000),
                        ("/chunked/70000?chunks=7", 70000), ("/close/50000", 50000)):
            status, _, body = http(tg.port, "GET", path, "app.test")
            assert status == 200, path
            assert body == pattern(n), "%s: got %d bytes" % (path, len(body))


def test_keepalive_many_requests_one_connection():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        with RawConn(tg.port) as c:
            for i in range(20):
                c.send("GET /bytes/%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % (i * 100))
                r = c.read_response()
                assert r.status == 200
                assert r.body == pattern(i * 100)
                assert (r.header("connection") or "").lower() != "close"
            assert not c.is_closed(0.3)


def test_pipelined_requests_answered_in_order():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        # the first is slow: a proxy answering out of order would show it
        reqs = ["GET /sleep/0.5 HTTP/1.1\r\nHost: app.test\r\n\r\n",
                "GET /bytes/10 HTTP/1.1\r\nHost: app.test\r\n\r\n",
                "POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello",
                "GET /chunked/300?chunks=3 HTTP/1.1\r\nHost: app.test\r\n\r\n",
                "HEAD /bytes/99 HTTP/1.1\r\nHost: app.test\r\n\r\n",
                "GET /status/204 HTTP/1.1\r\nHost: app.test\r\n\r\n",
                "GET /echo?last HTTP/1.1\r\nHost: app.test\r\n\r\n"]
        with RawConn(tg.port) as c:
            c.send("".join(reqs))          # one write: all requests in one segment
            r = [c.read_response() for _ in range(4)]
            r.append(c.read_response(head=True))
            r.append(c.read_response())
            r.append(c.read_response())
            assert r[0].status == 200 and r[0].body == b"slept 0.5\n", r[0]
            assert r[1].body == pattern(10)
            assert json.loads(r[2].body)["body_length"] == 5
            assert r[3].body == pattern(300)
            assert r[4].status == 200 and r[4].header("content-length") == "99" and r[4].body == b""
            assert r[5].status == 204
            assert json.loads(r[6].body)["query"] == "last"
            assert not c.is_closed(0.3)


def test_pipelined_flood_is_not_read_while_a_request_is_in_flight():
    # A client that pipelines far more than a head while its request waits on
    # the backend is not read past a bound: the proxy's memory stays flat and
    # the kernel's buffers push back on the client.
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        s = socket.create_connection(("127.0.0.1", tg.port))
        s.sendall(b"GET /sleep/2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        time.sleep(0.3)
        before = tg.rss_kb()
        s.settimeout(1.0)
        junk = b"x" * 65536
        pushed = 0
        try:
            while pushed < 256 * 1024 * 1024:
                pushed += s.send(junk)
        except (socket.timeout, BlockingIOError):
            pass
        grown = tg.rss_kb() - before
        assert pushed < 256 * 1024 * 1024, "the proxy kept reading: %d bytes taken" % pushed
        assert grown < 4096, "RSS grew by %d KiB while %d pipelined bytes waited" % (grown, pushed)
        s.settimeout(scale(10))
        data = b""
        while b"slept 2" not in data:
            piece = s.recv(65536)
            assert piece, data
            data += piece
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
        s.close()


def test_pipelined_requests_byte_by_byte():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        data = b"GET /bytes/3 HTTP/1.1\r\nHost: app.test\r\n\r\n" * 2
        with RawConn(tg.port) as c:
            for i in range(len(data)):
                c.send(data[i:i + 1])
                time.sleep(0.002)
            for _ in range(2):
                r = c.read_response()
                assert r.status == 200 and r.body == pattern(3)


def test_http10_client():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        # no keep-alive: answered, then closed
        out = raw(tg.port, b"GET /bytes/1000 HTTP/1.0\r\nHost: app.test\r\n\r\n")
        rs = parse_responses(out)
        assert len(rs) == 1 and rs[0].status == 200
        assert rs[0].body == pattern(1000)
        # a chunked backend response must not reach an HTTP/1.0 client chunked (RFC 9112 §7)
        out = raw(tg.port, b"GET /chunked/5000 HTTP/1.0\r\nHost: app.test\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower(), head
        assert body == pattern(5000), len(body)


def test_http10_keepalive():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        with RawConn(tg.port) as c:
            for _ in range(3):
                c.send(b"GET /bytes/500 HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n")
                r = c.read_response()
                assert r.status == 200 and r.body == pattern(500)
                assert r.framing == "length"


def test_http10_without_host_uses_no_route():
    # HTTP/1.0 may omit Host; with no route for an empty host it is a 404, not a crash
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        out = raw(tg.port, b"GET / HTTP/1.0\r\n\r\n")
        rs = parse_responses(out)
        assert rs and rs[0].status in (400, 404), out[:200]


def test_backend_closing_after_complete_response():
    """Regression: a backend that sends a whole Content-Length response and
    closes at once (HTTP/1.0 style) raced with the EOF handling: the client
    sometimes lost the body ("failed mid-response" in the log)."""
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        bad = 0
        for i in range(40):
            out = raw(tg.port, b"GET /bytes/%d HTTP/1.0\r\nHost: app.test\r\n\r\n" % (500 + i), timeout=3)
            rs = parse_responses(out)
            bad += not (len(rs) == 1 and rs[0].status == 200 and rs[0].body == pattern(500 + i))
        with RawConn(tg.port) as c:
            for i in range(40):
                c.send(b"GET /bytes/%d?close=1 HTTP/1.1\r\nHost: app.test\r\n\r\n" % (500 + i))
                try:
                    r = c.read_response()
                    bad += not (r.status == 200 and r.body == pattern(500 + i))
                except EOFError:
                    bad += 1
                    c.close()
                    c = RawConn(tg.port)
        assert bad == 0, "%d of 80 complete responses lost when the backend closed right after" % bad


def test_connection_close_honoured():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /bytes/10 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and r.body == pattern(10)
            assert c.is_closed(3)


def test_head_request():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        with RawConn(tg.port) as c:
            c.send(b"HEAD /bytes/12345 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response(head=True)
            assert r.status == 200 and r.header("content-length") == "12345"
            # the connection is still in sync: the next answer is the next request's
            c.send(b"GET /bytes/7 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.body == pattern(7)


def test_host_normalised():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        for host in ("APP.test", "app.test.", "app.test:%d" % tg.port, "App.Test.:80"):
            status, headers, body = http(tg.port, "GET", "/echo", host)
            assert status == 200, (host, status)
            assert headers["x-backend"] == "b1"


def test_absolute_form_target():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        out = raw(tg.port, b"GET http://app.test/echo?abs=1 HTTP/1.1\r\nHost: app.test\r\n"
                           b"Connection: close\r\n\r\n")
        rs = parse_responses(out)
        assert rs and rs[0].status == 200, out[:300]
        doc = json.loads(rs[0].body)
        assert doc["path"] == "/echo" and doc["query"] == "abs=1"


def test_routes_pick_backend_by_host():
    with Backend("b1") as b1, Backend("b2") as b2, \
            Tollgate(routes=["one.test=" + b1.addr, "two.test=" + b2.addr]) as tg:
        for _ in range(3):
            assert http(tg.port, "GET", "/echo", "one.test")[1]["x-backend"] == "b1"
            assert http(tg.port, "GET", "/echo", "two.test")[1]["x-backend"] == "b2"


def test_round_robin_over_static_backends():
    with Backend("b1") as b1, Backend("b2") as b2, \
            Tollgate(routes=["app.test=%s,%s" % (b1.addr, b2.addr)], workers=1) as tg:
        seen = [http(tg.port, "GET", "/echo", "app.test")[1]["x-backend"] for _ in range(10)]
        assert seen.count("b1") == 5 and seen.count("b2") == 5, seen


def test_upstream_connection_reused():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr], workers=1) as tg:
        ids = set()
        for _ in range(10):   # a new client connection each time
            status, headers, _ = http(tg.port, "GET", "/bytes/100", "app.test")
            assert status == 200
            ids.add(headers["x-conn-id"])
        assert len(ids) <= 2, "backend saw %d connections for 10 sequential requests" % len(ids)


def test_half_read_upstream_not_reused():
    """A client that leaves mid-response must not leave a half-read backend
    connection in the pool: the next request gets its own, correct answer."""
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr], workers=1) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /bytes/5000000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            c.read_head()
            c.recv_some()
        for i in range(5):
            status, _, body = http(tg.port, "GET", "/bytes/%d" % (1000 + i), "app.test")
            assert status == 200 and body == pattern(1000 + i)


def test_a_get_on_a_pooled_connection_the_backend_closed_is_sent_again_on_a_fresh_one():
    """A backend may close an idle keep-alive connection as a request is on its
    way (its keep-alive timeout): a GET, which can be sent again, is, on a new
    connection, as nginx does; the client sees only the answer."""
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr], workers=1) as tg:
        status, h1, _ = http(tg.port, "GET", "/bytes/10", "app.test")
        assert status == 200 and h1["x-conn-req"] == "1"
        time.sleep(0.05)    # the first connection idles in the pool
        status, h2, body = http(tg.port, "GET", "/bytes/20?stale=1", "app.test")
        assert status == 200 and body == pattern(20), (status, body)
        assert h2["x-conn-id"] != h1["x-conn-id"] and h2["x-conn-req"] == "1", (h1, h2)
        assert tg.metrics()["tollgate_upstream_reused_total"] >= 1


def test_a_post_on_a_pooled_connection_the_backend_closed_is_not_sent_again():
    """A request with a body may have been acted on: it is not sent twice
    (nginx's proxy_next_upstream without non_idempotent); the client gets 502."""
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr], workers=1) as tg:
        assert http(tg.port, "GET", "/bytes/10", "app.test")[0] == 200
        time.sleep(0.05)
        status, _, _ = http(tg.port, "POST", "/upload?stale=1", "app.test", body=b"x" * 100)
        assert status == 502, status
        stats = json.loads(http(tg.port, "GET", "/stats", "app.test")[2])
        assert stats["requests"] == 3, stats   # the GET, the POST once, /stats


def test_a_get_finds_a_fresh_connection_after_every_pooled_one_died():
    """A backend that lost every connection's state (a reboot, a failover)
    answers a request on each pooled connection with a close; a GET goes on
    to the next one and then to a fresh connection, however many died: a
    dead pooled connection is not a try of the backend (as in nginx).  (They
    counted as tries: with more than 7 pooled, the GET got 502 "No backend
    of this site is reachable" from a backend that was up.)"""
    n = 12
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr], workers=1) as tg:
        conns = [RawConn(tg.port) for _ in range(n)]
        for c in conns:
            c.send(b"GET /sleep/0.3 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        ids = set()
        for c in conns:
            resp = c.read_response()
            assert resp.status == 200
            ids.add(resp.header("x-conn-id"))
            c.close()
        assert len(ids) == n, ids                  # n backend connections, now pooled
        time.sleep(0.1)
        status, h, body = http(tg.port, "GET", "/bytes/20?stale=1", "app.test")
        assert status == 200 and body == pattern(20), (status, body[:200])
        assert h["x-conn-req"] == "1" and h["x-conn-id"] not in ids, h


def test_many_concurrent_clients():
    import threading
    errors = []
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        def worker(k):
            try:
                for i in range(10):
                    status, _, body = http(tg.port, "GET", "/bytes/%d" % (k * 10 + i), "app.test")
                    if status != 200 or body != pattern(k * 10 + i):
                        errors.append((k, i, status, len(body)))
            except Exception as e:
                errors.append((k, repr(e)))
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors[:5]


def test_client_abort_mid_request_body():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        s = socket.create_connection(("127.0.0.1", tg.port))
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.2)
        s.close()
        time.sleep(0.2)
        status, _, body = http(tg.port, "GET", "/bytes/10", "app.test")
        assert status == 200 and body == pattern(10)
