"""Streaming (issue 2): responses are forwarded as they arrive (SSE, token by
token output), Expect: 100-continue works, and Upgrade turns the connection
into a two-way tunnel (raw and with python3-websockets)."""

import asyncio
import hashlib
import json
import socket
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
