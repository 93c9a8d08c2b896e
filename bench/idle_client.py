#!/usr/bin/python3
"""bench/idle_client.py — hold N idle keep-alive HTTP/1.1 connections open.

Opens COUNT connections to 127.0.0.1:PORT (at most --parallel connecting at
once), sends one GET on each, reads its whole response (Content-Length or
chunked is not needed: the bench backend sends Content-Length), and keeps every
connection open and idle.  Prints "READY <count>" once all are idle, then waits
until its standard input closes (or SIGTERM), and exits, closing them all.
A connection that fails or gets a non-2xx status is an error: the script exits
1 with a message, so a proxy cannot look lean by refusing connections.

Usage: idle_client.py PORT COUNT [--host H] [--path /small.txt]
"""
import argparse
import errno
import selectors
import signal
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("--host", default="bench.local")
    ap.add_argument("--path", default="/small.txt")
    ap.add_argument("--parallel", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tollgate-bench\r\n\r\n"
           % (args.path, args.host)).encode()
    sel = selectors.DefaultSelector()
    idle = []
    pending = 0
    started = 0
    deadline = time.monotonic() + args.timeout

    def start_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", args.port))
        if err not in (0, errno.EINPROGRESS):
            sys.exit("connect: %s" % errno.errorcode.get(err, err))
        sel.register(s, selectors.EVENT_WRITE, {"buf": b"", "sent": False})

    while len(idle) < args.count:
        while started < args.count and pending < args.parallel:
            start_one()
            started += 1
            pending += 1
        if time.monotonic() > deadline:
            sys.exit("timeout: %d of %d connections idle" % (len(idle), args.count))
        for key, ev in sel.select(timeout=1.0):
            s, st = key.fileobj, key.data
            if not st["sent"]:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sys.exit("connect: %s" % errno.errorcode.get(err, err))
                s.send(req)      # tiny: fits the empty send buffer
                st["sent"] = True
                sel.modify(s, selectors.EVENT_READ, st)
                continue
            try:
                chunk = s.recv(65536)
            except ConnectionError as e:
                sys.exit("recv: %s" % e)
            if not chunk:
                sys.exit("connection closed before a whole response (after %d idle)" % len(idle))
            st["buf"] += chunk
            buf = st["buf"]
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = buf[:head_end].decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            if not 200 <= status < 300:
                sys.exit("status %d: %s" % (status, head[0]))
            clen = 0
            for h in head[1:]:
                k, _, v = h.partition(":")
                if k.strip().lower() == "content-length":
                    clen = int(v)
            if len(buf) - head_end - 4 < clen:
                continue
            sel.unregister(s)
            st["buf"] = b""
            idle.append(s)
            pending -= 1

    print("READY %d" % len(idle), flush=True)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    sys.stdin.read()          # until the caller closes our stdin
    for s in idle:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
