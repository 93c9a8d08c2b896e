"""Regression tests for bugs found by reviewing the HTTP/1.1 engine (proxy/conn.c,
proxy/upstream.c, proxy/server.c).  Each test names the mechanism it guards.

A throttled tenant must not make the proxy read a response from the backend
faster than the client is allowed to receive it (the per-connection watermark
holds whatever the tenant's state), and a close-delimited response must not lose
the bytes still waiting in the proxy when the backend closes.  A tunnel whose
client closes must first deliver what the client sent to the backend.
"""

import socket
import time

from tglib import *

TIMEOUT = 120


def month():
    return time.strftime("%Y%m", time.gmtime())


def throttled_domain(r, b, host="thr.test", tenant="thr", bps=200000):
    """A tenant over its cap with cap_action throttle, paced at bps."""
    r.cmd("HSET", "tg:domain:" + host, "tenant", tenant, "backends", b.addr)
    r.cmd("HSET", "tg:tenant:" + tenant, "cap_bytes", "1000", "cap_action", "throttle",
          "throttle_bps", str(bps))
    r.cmd("HSET", "tg:meter:%s:%s" % (tenant, month()), "bytes_in", "0", "bytes_out", "2000")
    return host


def read_to_eof(sock, limit_s):
    """Every byte until the peer closes (or limit_s passes)."""
    out = bytearray()
    deadline = time.monotonic() + limit_s
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            d = sock.recv(262144)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not d:
            break
        out += d
    return bytes(out)


# ------------------------------------------------------------------ throttle

def test_throttled_close_delimited_response_is_not_truncated():
    # conn.c up_event_cb, BODY_CLOSE at EOF: one relay_response_body() pass
    # moves at most the tenant's current allowance, then RF_RESP_DONE is set
    # and up_detach() frees the upstream with the rest still in its input.
    # Both ways of relaying it: close-delimited to an HTTP/1.0 client, and
    # re-chunked to an HTTP/1.1 client, whose chunks the throttle's small
    # grants shape (rechunk_move: a partial grant is a chunk of its own).
    n = 400000
    with Redis() as r, Backend("b") as b, Tollgate(redis=r.url) as tg:
        host = throttled_domain(r, b, bps=200000)
        st, _, _ = http(tg.port, "GET", "/bytes/10", host)
        assert st == 200
        with socket.create_connection(("127.0.0.1", tg.port), timeout=10) as s:
            s.sendall(("GET /close/%d HTTP/1.0\r\nHost: %s\r\n\r\n" % (n, host)).encode())
            data = read_to_eof(s, scale(30))
        head, sep, body = data.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.0 200"), data[:200]
        assert len(body) == n, "close-delimited body cut: %d of %d bytes" % (len(body), n)
        assert body == pattern(n)
        with RawConn(tg.port, timeout=scale(30)) as c:
            c.send(("GET /close/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (n, host)).encode())
            resp = c.read_response()
            assert resp.status == 200 and resp.framing == "chunked", (resp.status, resp.framing)
            assert len(resp.body) == n, "re-chunked body cut: %d of %d bytes" % (len(resp.body), n)
            assert resp.body == pattern(n)
            assert strict_dechunk(resp.raw.partition(b"\r\n\r\n")[2]) == resp.body


def strict_dechunk(data):
    """The data of a chunked body whose every chunk-size line is hex digits
    and CRLF, every chunk ends in CRLF and the last chunk ends it."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = data[pos:eol]
        assert size and all(ch in b"0123456789abcdefABCDEF" for ch in size), size
        k = int(size, 16)
        pos = eol + 2
        if k == 0:
            assert data[pos:] == b"\r\n", data[pos:pos + 20]
            return bytes(out)
        out += data[pos:pos + k]
        assert data[pos + k:pos + k + 2] == b"\r\n", data[pos + k:pos + k + 8]
        pos += k + 2


def test_throttled_download_holds_bounded_memory():
    # conn.c relay_response_body: when the tenant is throttled (RF_THROTTLED)
    # the loop moves nothing and the upstream is only paused when the client
    # output is above the watermark, which it never is: the proxy keeps
    # reading the backend into the upstream input buffer without bound.
    if SANITIZED:
        raise Skip("RSS is meaningless under sanitizers/valgrind")
    n = 150 * 1000 * 1000
    with Redis() as r, Backend("b") as b, Tollgate(redis=r.url, workers=1) as tg:
        host = throttled_domain(r, b, bps=100000)
        st, _, _ = http(tg.port, "GET", "/bytes/10", host)
        assert st == 200
        before = tg.rss_kb()
        with socket.create_connection(("127.0.0.1", tg.port), timeout=10) as s:
            s.sendall(("GET /bytes/%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (n, host)).encode())
            got = 0
            peak = before
            t0 = time.monotonic()
            s.settimeout(0.2)
            while time.monotonic() - t0 < 4:
                try:
                    got += len(s.recv(65536))
                except socket.timeout:
                    pass
                peak = max(peak, tg.rss_kb())
        grown = peak - before
        assert got > 0
        assert grown < 20 * 1024, "RSS grew by %d KiB while a throttled client received %d bytes" % (grown, got)


# ------------------------------------------------------------------ tunnel

def _slow_upgrade_backend(received):
    """Answers one Upgrade request with 101, then reads the tunnel slowly to
    EOF and records how many bytes arrived in received["n"]."""
    def serve(c, k):
        c.settimeout(30)
        buf = read_request_head(c)
        if b"\r\n\r\n" not in buf:
            return
        rest = buf.split(b"\r\n\r\n", 1)[1]
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: slowproto\r\nConnection: Upgrade\r\n\r\n")
        time.sleep(0.5)
        total = len(rest)
        while True:
            try:
                d = c.recv(16384)
            except (ConnectionResetError, socket.timeout):
                break
            if not d:
                break
            total += len(d)
            time.sleep(0.002)
        received["n"] = total

    return RawBackend(serve)


def test_tunnel_client_close_delivers_pending_bytes_to_backend():
    # conn.c client_event_cb: EOF from the client in CS_TUNNEL goes straight to
    # conn_close(), which frees the upstream bufferevent with up to a
    # watermark of the client's bytes still queued in its output.
    n = 16 * 1024 * 1024
    received = {}
    with _slow_upgrade_backend(received) as be:
        with Tollgate(routes=["tun.test=" + be.addr]) as tg:
            with socket.create_connection(("127.0.0.1", tg.port), timeout=10) as s:
                s.sendall(b"GET /t HTTP/1.1\r\nHost: tun.test\r\nConnection: Upgrade\r\nUpgrade: slowproto\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    d = s.recv(4096)
                    assert d, "no 101"
                    head += d
                assert head.startswith(b"HTTP/1.1 101"), head
                chunk = b"x" * 65536
                for _ in range(n // len(chunk)):
                    s.sendall(chunk)
                s.shutdown(socket.SHUT_WR)
                read_to_eof(s, scale(30))
            wait_until(lambda: "n" in received, scale(30), "the backend reading to EOF")
            assert received["n"] == n, "backend got %s of %d tunnelled bytes" % (received["n"], n)


# ------------------------------------------------------------------ absolute-form

def test_absolute_form_host_replaced_by_target_authority():
    # conn.c send_request: the request is routed by the absolute-form target's
    # authority (h1.c: "the target's authority wins"), but the received Host
    # field is forwarded unchanged, so the backend sees a host other than the
    # one the request was routed by.  RFC 9112 §3.2.2: a proxy forwarding such
    # a request MUST generate a new Host from the request-target.
    import json
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        out = raw(tg.port, b"GET http://app.test/echo HTTP/1.1\r\nHost: other.test\r\n"
                           b"Connection: close\r\n\r\n")
        rs = parse_responses(out)
        assert rs and rs[0].status == 200, out[:300]
        doc = json.loads(rs[0].body)
        hosts = [v for k, v in doc["headers"] if k.lower() == "host"]
        assert hosts == ["app.test"], "backend saw Host %r for a request routed by app.test" % hosts
