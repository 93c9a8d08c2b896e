#!/usr/bin/python3
"""bench/upload_sink.py — an HTTP/1.1 backend that reads request bodies and counts them.

Listens on 127.0.0.1:PORT (0 = any free port; the port is printed as
"PORT <n>" on stdout).  For every request it reads the whole body — by
Content-Length or chunked transfer coding (RFC 9112 §7.1) — discarding it, and
answers 200 with the body "received <bytes>\\n", so the caller can check that
every byte arrived.  Answers "100 Continue" first when the request asks for it
(RFC 9110 §10.1.1).  Keep-alive; one thread per connection.
--rate BYTES_PER_S makes it a slow reader (to test the proxy's backpressure).

Usage: upload_sink.py [PORT] [--rate N]
"""
import argparse
import socket
import sys
import threading
import time

BUF = 256 * 1024


class Reader:
    """Buffered reads over a socket, with an optional rate limit."""

    def __init__(self, sock, rate):
        self.sock = sock
        self.rate = rate
        self.buf = bytearray()
        self.start = time.monotonic()
        self.total = 0
        self.scratch = bytearray(BUF)

    def _fill(self):
        if self.rate:
            ahead = self.total / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(ahead)
        n = self.sock.recv_into(self.scratch, 65536 if self.rate else BUF)
        if n == 0:
            raise EOFError
        self.total += n
        self.buf += memoryview(self.scratch)[:n]

    def line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return out
            if len(self.buf) > 65536:
                raise ValueError("line too long")
            self._fill()

    def skip(self, n):
        """Discard exactly n bytes; returns n."""
        left = n
        while left:
            if not self.buf:
                self._fill()
            k = min(left, len(self.buf))
            del self.buf[:k]
            left -= k
        return n


def serve(conn, rate):
    r = Reader(conn, rate)
    try:
        while True:
            reqline = r.line()
            if not reqline:
                continue
            headers = {}
            while True:
                h = r.line()
                if not h:
                    break
                k, _, v = h.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            if headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            got = 0
            if "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    size = int(r.line().split(b";")[0], 16)
                    if size == 0:
                        while r.line():      # trailer section
                            pass
                        break
                    got += r.skip(size)
                    if r.line() != b"":
                        raise ValueError("bad chunk end")
            else:
                got = r.skip(int(headers.get("content-length", "0")))
            body = b"received %d\n" % got
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            if headers.get("connection", "").lower() == "close":
                break
    except (EOFError, ConnectionError, ValueError):
        pass
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int, nargs="?", default=0)
    ap.add_argument("--rate", type=float, default=0, help="read at most N bytes/s")
    args = ap.parse_args()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", args.port))
    ls.listen(128)
    print("PORT %d" % ls.getsockname()[1], flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(c, args.rate), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
