"""Streaming (issue 2): responses are forwarded as they arrive (SSE, token by
token output), Expect: 100-continue works, and Upgrade turns the connection
into a two-way tunnel (raw and with python3-websockets)."""

import asyncio
import hashlib
import json
import socket
import threading
import time

from tglib import *

ROUTE = "app.test"


def _tg(b, **kw):
    return Tollgate(routes=[ROUTE + "=" + b.addr], **kw)


def test_sse_events_arrive_one_by_one():
    n, interval = 5, 0.4
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /sse?n=%d&interval=%s HTTP/1.1\r\nHost: app.test\r\nAccept: text/event-stream\r\n\r\n"
                   % (n, str(interval).encode()))
            r = c.read_head()
            assert r.status == 200
            assert r.header("content-type") == "text/event-stream"
            t0 = time.monotonic()
            got = b""
            arrivals = []
            while got.count(b"\n\n") < n:
                d = c.recv_some()
                assert d, "connection closed after %r" % got
                got += d
                for _ in range(got.count(b"\n\n") - len(arrivals)):
                    arrivals.append(time.monotonic() - t0)
            # event i must arrive about i*interval after event 0, not in a batch at the end
            for i, t in enumerate(arrivals):
                assert abs(t - i * interval) < 0.25 + 0.05 * i, "event %d at %.2fs (expected %.2fs): %s" % (
                    i, t, i * interval, arrivals)
            for i in range(n):
                assert b"data: event %d\n" % i in got


def test_slow_body_forwarded_progressively():
    # 2000 bytes at 1000 B/s: the first bytes must arrive long before the last
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /slowbody/2000?rate=1000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            c.read_head()
            t0 = time.monotonic()
            first = c.recv_some()
            t_first = time.monotonic() - t0
            total = len(first)
            while total < 2000:
                d = c.recv_some()
                assert d
                total += len(d)
            t_last = time.monotonic() - t0
            assert t_first < 0.5, "first body bytes after %.2fs" % t_first
            assert t_last > 1.5, "whole body after %.2fs: was it paced?" % t_last


def test_chunked_stream_to_client_is_chunked_or_streamed():
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /slowbody/3000?rate=3000&chunked=1 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.body == pattern(3000)
            assert r.framing in ("chunked", "close")


def test_expect_100_continue():
    payload = b"p" * 100000
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n"
                   b"Expect: 100-continue\r\n\r\n" % len(payload))
            # the client waits for the interim answer before sending the body
            r = c.read_head()
            assert r.status == 100, r
            c.send(payload)
            r = c.read_response()
            assert r.status == 200
            doc = json.loads(r.body)
            assert doc["body_length"] == len(payload)
            assert doc["body_sha256"] == hashlib.sha256(payload).hexdigest()
            # the connection is in sync afterwards
            c.send(b"GET /bytes/4 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            assert c.read_response().body == pattern(4)


def test_expect_100_continue_refused_by_backend():
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"POST /upload?expect=reject HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            r = c.read_response(skip_1xx=False)
            assert r.status == 417, r


def test_expect_100_continue_chunked():
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            assert c.read_head().status == 100
            c.send(b"3\r\nabc\r\n0\r\n\r\n")
            r = c.read_response()
            assert json.loads(r.body)["body_length"] == 3


def test_expect_100_continue_with_curl():
    import subprocess
    with Backend("b1") as b, _tg(b) as tg:
        out = subprocess.run(["curl", "-s", "-S", "--max-time", "10", "-H", "Host: app.test",
                              "-H", "Expect: 100-continue", "--expect100-timeout", "8",
                              "--data-binary", "@-", "http://127.0.0.1:%d/upload" % tg.port],
                             input=b"c" * 50000, capture_output=True)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["body_length"] == 50000


def _ws_handshake(c, path=b"/ws"):
    c.send(b"GET " + path + b" HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return c.read_head()


def _ws_frame(opcode, payload, mask=b"\x01\x02\x03\x04"):
    import struct
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return hdr + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def test_upgrade_raw_tunnel():
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            r = _ws_handshake(c)
            assert r.status == 101, r
            assert r.header("upgrade", "").lower() == "websocket"
            assert "upgrade" in r.header("connection", "").lower()
            assert r.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            c.send(_ws_frame(1, b"hello"))
            assert c.read_exact(7) == b"\x81\x05hello"
            c.send(_ws_frame(9, b"pingdata"))
            assert c.read_exact(10) == b"\x8a\x08pingdata"
            c.send(_ws_frame(8, b"\x03\xe8"))
            assert c.read_exact(4) == b"\x88\x02\x03\xe8"
            assert c.is_closed(3)


def test_websocket_client_echo():
    import websockets

    async def run(port):
        async with websockets.connect("ws://app.test:%d/ws" % port, host="127.0.0.1", max_size=None) as ws:
            for msg in ("hello", "x" * 70000, "ünïcödé"):
                await ws.send(msg)
                assert await ws.recv() == msg
            big = bytes(range(256)) * 4096            # 1 MiB binary message
            await ws.send(big)
            assert await ws.recv() == big
            pong = await ws.ping(b"p")
            await asyncio.wait_for(pong, 5)

    with Backend("b1") as b, _tg(b) as tg:
        asyncio.run(asyncio.wait_for(run(tg.port), 30))


def test_websocket_lives_past_read_timeout_while_idle_pings_flow():
    """A tunnel with traffic lives longer than --upstream-read-timeout."""
    import websockets

    async def run(port):
        async with websockets.connect("ws://app.test:%d/ws" % port, host="127.0.0.1", ping_interval=None) as ws:
            t0 = time.monotonic()
            i = 0
            while time.monotonic() - t0 < 3.5:
                await ws.send("m%d" % i)
                assert await ws.recv() == "m%d" % i
                i += 1
                await asyncio.sleep(0.5)

    with Backend("b1") as b, _tg(b, args=["--upstream-read-timeout", "1"]) as tg:
        asyncio.run(asyncio.wait_for(run(tg.port), 20))


def test_websocket_many_parallel():
    import websockets

    async def one(port, k):
        async with websockets.connect("ws://app.test:%d/ws" % port, host="127.0.0.1") as ws:
            for i in range(20):
                await ws.send("%d-%d" % (k, i))
                assert await ws.recv() == "%d-%d" % (k, i)

    async def run(port):
        await asyncio.gather(*(one(port, k) for k in range(30)))

    with Backend("b1") as b, _tg(b) as tg:
        asyncio.run(asyncio.wait_for(run(tg.port), 60))


def test_upgrade_refused_by_backend_keeps_http():
    # /echo does not upgrade: the response is a normal 200 and the connection stays HTTP
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            r = c.read_response()
            assert r.status == 200
            c.send(b"GET /bytes/9 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            assert c.read_response().body == pattern(9)


def test_backend_close_ends_tunnel():
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            assert _ws_handshake(c).status == 101
            b.stop()
            assert c.is_closed(5)


# ---------------------------------------------------------------- slow but steady peers
#
# Linux wakes a writer only once about a third of its send buffer is free, and
# the buffer autotunes to megabytes: a peer that reads 64 KiB/s leaves the
# socket unwritable for far longer than a 2 s timeout while bytes move all the
# time.  Such a peer was taken for one that stopped reading and cut, a
# download silently truncated.  tollgate now asks the kernel whether the peer
# acknowledged bytes since the last timeout (TCP_INFO) before it gives up.

def _read_slowly(socks, seconds, rate=65536):
    """Reads each socket at about rate bytes/s for seconds; bytes read per socket."""
    got = [0] * len(socks)
    t0 = time.time()
    while time.time() - t0 < seconds:
        for i, s in enumerate(socks):
            d = s.recv(rate // 10)
            assert d, "connection %d ended after %.1fs, %d bytes" % (i, time.time() - t0, got[i])
            got[i] += len(d)
        time.sleep(0.1)
    return got


def test_a_client_reading_slowly_is_not_cut_by_the_write_timeout():
    with Backend("b1") as b, _tg(b, workers=1, args=["--client-body-timeout", "2"]) as tg:
        socks = []
        for path in (b"/bytes/67108864", b"/chunked/67108864?chunks=1024"):   # spliced, copied
            s = socket.create_connection(("127.0.0.1", tg.port), timeout=5)
            s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: app.test\r\n\r\n")
            socks.append(s)
        got = _read_slowly(socks, scale(6))
        assert tg.access_log_lines() == [], tg.access_log_lines()   # neither transfer ended
        assert min(got) > 200000, got
        for s in socks:
            s.close()


def test_a_client_whose_window_stays_closed_for_two_write_timeouts_is_not_cut():
    """A steady slow reader's receive window can stay closed for two minutes
    (Linux probes a closed window at intervals that back off to 120 s, and
    nothing is acknowledged until a probe finds it open): at a 60 s timeout
    a 1 KiB/s download was cut at 120 s.  Scaled down: a client that reads
    nothing for 2.3 write timeouts, then reads on, gets every byte."""
    n = 64 << 20
    with Backend("b1") as b, _tg(b, workers=1, args=["--client-body-timeout", "1"]) as tg:
        for path in ("/bytes/%d" % n, "/chunked/%d?chunks=1024" % n):     # spliced, copied
            with RawConn(tg.port, timeout=30) as c:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                c.send("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, ROUTE))
                time.sleep(2.3)
                r, count, sha = c.read_response_sha()
                assert r.status == 200 and count == n, (path, r.status, count, tg.access_log_lines())
                assert sha == pattern_sha256(n)


def test_a_client_that_stops_reading_is_cut_after_three_write_timeouts():
    """A client that reads nothing more is cut at the third write timeout in
    a row with nothing acknowledged (3-4 periods), not at the first (1-2)."""
    with Backend("b1") as b, _tg(b, workers=1, args=["--client-body-timeout", "1"]) as tg:
        with RawConn(tg.port, timeout=30) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.send("GET /bytes/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (64 << 20, ROUTE))
            time.sleep(2.6)
            assert tg.access_log_lines() == [], tg.access_log_lines()      # not cut yet
            wait_until(lambda: tg.access_log_lines(), timeout=scale(8), what="the stalled download cut")
            line = tg.access_log_lines()[0]
            assert " 200 " in line, line


def test_a_tunnel_to_a_slowly_reading_client_is_not_idle():
    def serve(s, n):
        read_request_head(s)
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
        try:
            s.sendall(b"d" * (64 << 20))
        except OSError:
            pass
        return False
    with RawBackend(serve) as b, _tg(b, workers=1, args=["--upstream-read-timeout", "2"]) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /t HTTP/1.1\r\nHost: app.test\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
            assert c.read_head().status == 101
            got = _read_slowly([c.sock], scale(6))
            assert tg.access_log_lines() == [], tg.access_log_lines()
            assert got[0] > 200000, got


def test_an_upload_to_a_slowly_reading_backend_is_not_cut():
    res = {"got": 0}
    done, checked = threading.Event(), threading.Event()

    def serve(s, n):
        read_request_head(s)
        s.settimeout(5)
        try:
            res["got"] = _read_slowly([s], scale(6))[0]
        except (AssertionError, OSError) as e:
            res["error"] = repr(e)
        done.set()
        checked.wait(10)   # closing now would end the exchange (502) before the log is read
        return False
    with RawBackend(serve) as b, _tg(b, workers=1, args=["--upstream-read-timeout", "2"]) as tg:
        c = socket.create_connection(("127.0.0.1", tg.port), timeout=30)
        c.sendall(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % (64 << 20))

        def send():
            try:
                c.sendall(b"q" * (64 << 20))
            except OSError:
                pass
        t = threading.Thread(target=send, daemon=True)
        t.start()
        assert done.wait(scale(15)), "the backend's slow read did not end"
        assert "error" not in res, res
        lines = tg.access_log_lines()
        checked.set()
        assert lines == [], lines   # no 504: the upload went on
        assert res["got"] > 200000, res
        c.close()


def test_a_backend_half_close_is_passed_on_and_the_client_may_still_send():
    """A backend that shuts down its sending side (SHUT_WR) but keeps
    reading: its FIN reaches the client after its last byte, the client's
    later bytes still reach the backend, and the tunnel ends when the client
    closes too -- as a client's half-close already worked.  (tollgate ended
    the whole tunnel at the backend's FIN: the client's bytes were lost.)"""
    n = 1 << 20
    res = {}
    done = threading.Event()

    def serve(s, k):
        s.settimeout(10)
        read_request_head(s)
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\nbye\n")
        s.shutdown(socket.SHUT_WR)
        got = hashlib.sha256()
        size = 0
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got.update(d)
                size += len(d)
        except OSError as e:
            res["error"] = repr(e)
        res["size"], res["sha"] = size, got.hexdigest()
        done.set()
        return False
    with RawBackend(serve) as b, _tg(b, workers=1) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /t HTTP/1.1\r\nHost: app.test\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
            assert c.read_head().status == 101
            rest = c.buf
            c.buf = b""
            while True:                              # the backend's bytes, then its FIN
                d = c.sock.recv(65536)
                if not d:
                    break
                rest += d
            assert rest == b"bye\n", rest
            body = bytes(range(256)) * (n // 256)
            c.sock.sendall(body)
            c.sock.shutdown(socket.SHUT_WR)
            assert done.wait(10), "the backend never saw the client's FIN"
            assert "error" not in res and res["size"] == n, res
            assert res["sha"] == hashlib.sha256(body).hexdigest()
            line = wait_until(lambda: tg.access_log_lines(), 5, "the tunnel's access log line")[-1]
            assert line.split()[5] == "101", line
