#!/usr/bin/python3
"""backend.py: a scriptable HTTP/1.1 origin server for tollgate's end-to-end tests.

    /usr/bin/python3 tests/e2e/backend.py --port P [--name N] [--host 127.0.0.1]

Written on raw asyncio streams (no http.server) so that every byte of framing is
under the test's control.  Bodies are streamed in 64 KiB pieces both ways, so a
1 GiB upload or download costs no memory here.

Every response carries:
    X-Backend: N            the --name given at start
    X-Conn-Id: I            a per-process counter of accepted connections
    X-Conn-Req: K           1 for the first request on that connection, 2 ...
and any header asked for with the query parameter h=Name:Value (repeatable),
e.g. /status/200?h=Keep-Alive:timeout=5&h=X-Hop:1.  The query parameter
close=1 makes any route answer with "Connection: close" and close the
connection right after its response (a complete, length-delimited one).
The query parameter stale=1 makes any route close the connection without
answering when the request is not the first on its connection: a backend whose
keep-alive timeout closed a connection as the request was on its way.

Request bodies (Content-Length or chunked) are always read to the end (counted
and hashed) before the response starts, except for /ws.  When the request has
`Expect: 100-continue`, "HTTP/1.1 100 Continue" is sent before the body is
read, unless the query has expect=ignore (then the body is read without it) or
expect=reject (answers 417 without reading the body and closes).

Routes:
  /echo                JSON {name, method, target, path, query, version,
                       headers: [[name, value], ...], body_length, body_sha256,
                       body_framing: "none"|"length"|"chunked", conn_id, conn_req,
                       peer}
  /upload              JSON {name, body_length, body_sha256, body_framing}
  /bytes/N             N pattern bytes with Content-Length (pattern: see below)
  /chunked/N?chunks=K  N pattern bytes, chunked, in K chunks (default 4)
  /sse?n=5&interval=0.2  text/event-stream, chunked, one event per interval,
                       each "id: i\\ndata: event i\\n\\n", flushed one by one
  /close/N             N pattern bytes, no Content-Length, Connection: close,
                       delimited by closing the connection (?v=1.0 sends an
                       HTTP/1.0 status line)
  /sleep/S             waits S seconds (float) then answers "slept S\\n"
  /status/C            answers status C with a short body (none for 1xx/204/304)
  /reset               closes the connection without answering (?rst=1: RST)
  /truncate/N          announces Content-Length N, sends N/2 bytes, closes
                       (?rst=1: with a reset)
  /slowbody/N?rate=B   N pattern bytes at about B bytes/s (default 1000) with
                       Content-Length (?chunked=1: chunked)
  /ws                  WebSocket echo (RFC 6455): text and binary messages are
                       echoed, ping answered with pong, close echoed
  /stats               JSON {connections, requests} since start
  anything else        404 with a short body

The pattern: byte i of a pattern body is i % 251 (251 is prime, so a shifted or
truncated body is detected).  tglib.pattern(n) / tglib.pattern_sha256(n)
compute the same.

HEAD gets the headers of GET and no body.  Keep-alive as in RFC 9112 §9.3:
HTTP/1.1 persists unless "Connection: close"; HTTP/1.0 only with
"Connection: keep-alive".
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import urllib.parse

PATTERN_BLOCK = bytes(i % 251 for i in range(251 * 261))   # 65511 bytes, a whole number of periods
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_SIZE = 65536

NAME = "backend"
STATS = {"connections": 0, "requests": 0}


class BadRequest(Exception):
    pass


def pattern_chunks(n, offset=0, size=READ_SIZE):
    """Yields the pattern bytes [offset, offset+n) in pieces of <= size."""
    pos = offset
    end = offset + n
    while pos < end:
        start = pos % 251
        take = min(size, end - pos, len(PATTERN_BLOCK) - start)
        yield PATTERN_BLOCK[start:start + take]
        pos += take


class Request:
    def __init__(self):
        self.method = ""
        self.target = ""
        self.path = ""
        self.query = {}
        self.raw_query = ""
        self.version = ""
        self.headers = []

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_tokens(self, name):
        out = set()
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                for t in v.split(","):
                    t = t.strip().lower()
                    if t:
                        out.add(t)
        return out

    def q(self, key, default=None):
        vals = self.query.get(key)
        return vals[0] if vals else default


async def read_head(reader):
    """Reads a request head; returns None on a clean EOF before any byte."""
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise BadRequest("truncated head")
    except asyncio.LimitOverrunError:
        raise BadRequest("head too large")
    lines = data[:-4].split(b"\r\n")
    while lines and lines[0] == b"":
        lines.pop(0)
    if not lines:
        raise BadRequest("empty head")
    try:
        method, target, version = lines[0].decode("latin-1").split(" ")
    except ValueError:
        raise BadRequest("bad request line %r" % lines[0])
    req = Request()
    req.method, req.target, req.version = method, target, version
    parsed = urllib.parse.urlsplit(target)
    req.path = parsed.path if parsed.path else target
    req.raw_query = parsed.query
    req.query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
    for line in lines[1:]:
        k, sep, v = line.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest("bad header line %r" % line)
        req.headers.append((k, v.strip(" \t")))
    return req


async def read_body(req, reader, on_data):
    """Reads the request body with its framing; returns "none"/"length"/"chunked"."""
    if "chunked" in req.header_tokens("transfer-encoding"):
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailers until the empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return "chunked"
            left = size
            while left:
                piece = await reader.read(min(left, READ_SIZE))
                if not piece:
                    raise BadRequest("eof in chunk")
                on_data(piece)
                left -= len(piece)
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest("missing CRLF after chunk")
    cl = req.header("content-length")
    if cl is None:
        return "none"
    left = int(cl)
    while left:
        piece = await reader.read(min(left, READ_SIZE))
        if not piece:
            raise BadRequest("eof in body")
        on_data(piece)
        left -= len(piece)
    return "length"


class Conn:
    def __init__(self, reader, writer, conn_id):
        self.reader = reader
        self.writer = writer
        self.conn_id = conn_id
        self.nreq = 0

    def head(self, req, status, headers, version="HTTP/1.1", reason=None):
        reason = reason or REASONS.get(status, "Status")
        out = ["%s %d %s" % (version, status, reason)]
        out.append("X-Backend: %s" % NAME)
        out.append("X-Conn-Id: %d" % self.conn_id)
        out.append("X-Conn-Req: %d" % self.nreq)
        out.extend("%s: %s" % hv for hv in headers)
        if req is not None:
            for hv in req.query.get("h", []):
                name, _, value = hv.partition(":")
                out.append("%s: %s" % (name, value))
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")

    async def send(self, data):
        self.writer.write(data)
        await self.writer.drain()

    async def simple(self, req, status, body, ctype="text/plain", keep=True, extra=()):
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        headers.extend(extra)
        if not keep:
            headers.append(("Connection", "close"))
        no_body = req.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if status in (204, 304) or 100 <= status < 200:
            headers = [h for h in headers if h[0] != "Content-Length"]
        await self.send(self.head(req, status, headers) + (b"" if no_body else body))

    async def stream_pattern(self, req, n, chunked=False, rate=None, piece=READ_SIZE):
        if req.method == "HEAD":
            return
        sent = 0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for part in pattern_chunks(n, size=piece):
            if chunked:
                self.writer.write(b"%x\r\n" % len(part) + part + b"\r\n")
            else:
                self.writer.write(part)
            await self.writer.drain()
            sent += len(part)
            if rate:
                due = t0 + sent / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        if chunked:
            await self.send(b"0\r\n\r\n")

    async def serve(self):
        while True:
            try:
                req = await read_head(self.reader)
            except (BadRequest, ValueError) as e:
                await self.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                print("%s: bad request: %s" % (NAME, e), file=sys.stderr)
                return
            if req is None:
                return
            self.nreq += 1
            STATS["requests"] += 1
            if req.q("stale") == "1" and self.nreq > 1:
                return
            keep = self.keepalive(req)
            if not await self.dispatch(req, keep):
                return
            if not keep:
                return

    @staticmethod
    def keepalive(req):
        if req.q("close") == "1":
            return False
        tokens = req.header_tokens("connection")
        if "close" in tokens:
            return False
        if req.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return True

    async def dispatch(self, req, keep):
        """Answers one request; returns False when the connection must end."""
        parts = [p for p in req.path.split("/") if p]
        route = parts[0] if parts else ""
        arg = parts[1] if len(parts) > 1 else None

        if route == "ws":
            await self.websocket(req)
            return False

        # Expect: 100-continue (RFC 9110 §10.1.1)
        expects = "100-continue" in req.header_tokens("expect")
        mode = req.q("expect", "")
        if expects and mode == "reject":
            await self.simple(req, 417, b"expectation refused\n", keep=False)
            return False
        if expects and mode != "ignore":
            await self.send(b"HTTP/1.1 100 Continue\r\n\r\n")

        sha = hashlib.sha256()
        count = [0]

        def on_data(piece):
            sha.update(piece)
            count[0] += len(piece)

        try:
            framing = await read_body(req, self.reader, on_data)
        except (BadRequest, ValueError, asyncio.IncompleteReadError) as e:
            print("%s: bad body: %s" % (NAME, e), file=sys.stderr)
            return False
        body_info = {"body_length": count[0], "body_sha256": sha.hexdigest(), "body_framing": framing}

        if route == "echo":
            peer = self.writer.get_extra_info("peername")
            doc = {"name": NAME, "method": req.method, "target": req.target, "path": req.path,
                   "query": req.raw_query, "version": req.version,
                   "headers": [[k, v] for k, v in req.headers],
                   "conn_id": self.conn_id, "conn_req": self.nreq,
                   "peer": "%s:%d" % (peer[0], peer[1]) if peer else ""}
            doc.update(body_info)
            await self.simple(req, 200, json.dumps(doc).encode() + b"\n", "application/json", keep)
        elif route == "upload":
            doc = {"name": NAME}
            doc.update(body_info)
            await self.simple(req, 200, json.dumps(doc).encode() + b"\n", "application/json", keep)
        elif route == "bytes":
            n = int(arg or 0)
            hdrs = [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))]
            if not keep:
                hdrs.append(("Connection", "close"))
            await self.send(self.head(req, 200, hdrs))
            await self.stream_pattern(req, n)
        elif route == "chunked":
            n = int(arg or 0)
            k = max(1, int(req.q("chunks", "4")))
            hdrs = [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")]
            if not keep:
                hdrs.append(("Connection", "close"))
            await self.send(self.head(req, 200, hdrs))
            await self.stream_pattern(req, n, chunked=True, piece=max(1, -(-n // k)) if n else READ_SIZE)
        elif route == "sse":
            n = int(req.q("n", "5"))
            interval = float(req.q("interval", "0.2"))
            hdrs = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                    ("Transfer-Encoding", "chunked")]
            if not keep:
                hdrs.append(("Connection", "close"))
            await self.send(self.head(req, 200, hdrs))
            if req.method == "HEAD":
                return True
            for i in range(n):
                ev = ("id: %d\ndata: event %d\n\n" % (i, i)).encode()
                await self.send(b"%x\r\n" % len(ev) + ev + b"\r\n")
                if i + 1 < n:
                    await asyncio.sleep(interval)
            await self.send(b"0\r\n\r\n")
        elif route == "close":
            n = int(arg or 0)
            version = "HTTP/1.0" if req.q("v") == "1.0" else "HTTP/1.1"
            await self.send(self.head(req, 200, [("Content-Type", "application/octet-stream"),
                                                 ("Connection", "close")], version=version))
            await self.stream_pattern(req, n)
            return False
        elif route == "sleep":
            s = float(arg or 1)
            await asyncio.sleep(s)
            await self.simple(req, 200, ("slept %s\n" % arg).encode(), keep=keep)
        elif route == "status":
            code = int(arg or 200)
            await self.simple(req, code, ("status %d\n" % code).encode(), keep=keep)
        elif route == "reset":
            if req.q("rst") == "1":
                sock = self.writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        elif route == "truncate":
            n = int(arg or 1000)
            await self.send(self.head(req, 200, [("Content-Type", "application/octet-stream"),
                                                 ("Content-Length", str(n))]))
            await self.stream_pattern(req, n // 2)
            if req.q("rst") == "1":
                await self.writer.drain()
                sock = self.writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        elif route == "slowbody":
            n = int(arg or 1000)
            rate = float(req.q("rate", "1000"))
            chunked = req.q("chunked") == "1"
            hdrs = [("Content-Type", "application/octet-stream")]
            hdrs.append(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(n)))
            if not keep:
                hdrs.append(("Connection", "close"))
            await self.send(self.head(req, 200, hdrs))
            piece = max(1, min(READ_SIZE, int(rate / 10)))
            await self.stream_pattern(req, n, chunked=chunked, rate=rate, piece=piece)
        elif route == "stats":
            await self.simple(req, 200, json.dumps(STATS).encode() + b"\n", "application/json", keep)
        else:
            await self.simple(req, 404, b"no such route\n", keep=keep)
        return True

    async def websocket(self, req):
        key = req.header("sec-websocket-key")
        if "websocket" not in req.header_tokens("upgrade") or not key:
            await self.simple(req, 400, b"not a websocket request\n", keep=False)
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        hdrs = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)]
        proto = req.header("sec-websocket-protocol")
        if proto:
            hdrs.append(("Sec-WebSocket-Protocol", proto.split(",")[0].strip()))
        await self.send(self.head(req, 101, hdrs, reason="Switching Protocols"))
        r = self.reader
        while True:
            try:
                b0, b1 = await r.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", await r.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await r.readexactly(8))[0]
                mask = await r.readexactly(4) if b1 & 0x80 else None
                payload = await r.readexactly(n)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if mask:
                payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload)) if n < 4096 else \
                    _unmask_big(payload, mask)
            opcode = b0 & 0x0F
            if opcode == 0x9:      # ping -> pong
                await self.send(ws_frame(0x8A, payload))
            elif opcode == 0xA:    # pong: ignore
                pass
            elif opcode == 0x8:    # close: echo and end
                await self.send(ws_frame(0x88, payload))
                return
            else:                  # text, binary, continuation: echo as is (FIN bit kept)
                await self.send(ws_frame(b0, payload))


def _unmask_big(payload, mask):
    n = len(payload)
    m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big")


def ws_frame(b0, payload):
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", b0, n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, 127, n)
    return hdr + payload


REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
           301: "Moved Permanently", 302: "Found", 304: "Not Modified", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 417: "Expectation Failed",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}

_next_conn = [0]


async def handle(reader, writer):
    _next_conn[0] += 1
    STATS["connections"] += 1
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = Conn(reader, writer, _next_conn[0])
    try:
        await conn.serve()
    except (ConnectionError, asyncio.IncompleteReadError, BrokenPipeError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    global NAME
    ap = argparse.ArgumentParser(description="tollgate e2e test backend")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="backend")
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    NAME = args.name
    server = await asyncio.start_server(handle, args.host, args.port, limit=1 << 20,
                                        reuse_address=True)
    print("backend %s listening on %s:%d pid %d" % (NAME, args.host, args.port, os.getpid()),
          file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
