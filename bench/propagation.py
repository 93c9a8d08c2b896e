#!/usr/bin/python3
"""bench/propagation.py — how long a route change in Redis takes to reach tollgate.

Two backends answer with different bodies (A and B).  For each of COUNT
changes the script writes the domain's backends with HSET (a plain Redis
client: nothing is published), then sends requests through tollgate over one
keep-alive connection, every --poll seconds, until one reaches the new backend;
the propagation time is from just before the HSET to that response.  Before
each change it checks that tollgate still routes to the old backend (so the
route is cached), and waits a random 10-50 ms.  Prints p50/p90/p99/max and the
number of changes not seen within --timeout (counted at the timeout value).

Usage: propagation.py --tg-port P --redis-port R --host H --a ADDR --b ADDR
           [--body-a A] [--body-b B] [--count 100] [--prefix tg:]
"""
import argparse
import random
import socket
import sys
import time


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Redis:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))

    def call(self, *args):
        self.s.sendall(resp(*args))
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = self.s.recv(4096)
            if not chunk:
                sys.exit("redis closed the connection")
            buf += chunk
        if buf.startswith(b"-"):
            sys.exit("redis: %s" % buf.decode().strip())
        return buf


class Client:
    """Minimal keep-alive HTTP/1.1 client (Content-Length responses)."""

    def __init__(self, port, host):
        self.port, self.host, self.s = port, host, None
        self.req = ("GET /whoami HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode()

    def get(self):
        for _ in range(2):
            try:
                if self.s is None:
                    self.s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                self.s.sendall(self.req)
                return self._read()
            except (OSError, EOFError):
                if self.s:
                    self.s.close()
                self.s = None
        return None, b""

    def _read(self):
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        clen, close = 0, False
        for h in lines[1:]:
            k, _, v = h.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                clen = int(v)
            elif k == "connection" and "close" in v.lower():
                close = True
        while len(body) < clen:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            body += chunk
        if close:
            self.s.close()
            self.s = None
        return status, body


def pct(vals, p):
    vals = sorted(vals)
    k = max(0, min(len(vals) - 1, int(round(p / 100.0 * len(vals) + 0.5)) - 1))
    return vals[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tg-port", type=int, required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--a", required=True, help="backend A host:port")
    ap.add_argument("--b", required=True, help="backend B host:port")
    ap.add_argument("--body-a", default="A")
    ap.add_argument("--body-b", default="B")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--prefix", default="tg:")
    ap.add_argument("--tenant", default="bench")
    ap.add_argument("--poll", type=float, default=0.0005)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()

    r = Redis(args.redis_port)
    cl = Client(args.tg_port, args.host)
    key = args.prefix + "domain:" + args.host
    addr = {"A": args.a, "B": args.b}
    body = {"A": args.body_a.encode(), "B": args.body_b.encode()}

    def wait_for(which, limit):
        t_end = time.monotonic() + limit
        while True:
            st, b = cl.get()
            if st == 200 and b.strip() == body[which]:
                return True
            if time.monotonic() > t_end:
                return False
            time.sleep(args.poll)

    r.call("HSET", key, "tenant", args.tenant, "backends", addr["A"])
    if not wait_for("A", 10):
        sys.exit("tollgate never routed %s to backend A (%s)" % (args.host, addr["A"]))
    times, missed, cur = [], 0, "A"
    for i in range(args.count):
        new = "B" if cur == "A" else "A"
        if not wait_for(cur, 1):      # the old route must still be in force
            sys.exit("change %d: route flapped before the write" % i)
        time.sleep(random.uniform(0.01, 0.05))
        t0 = time.monotonic()
        r.call("HSET", key, "backends", addr[new])
        ok = wait_for(new, args.timeout)
        dt = time.monotonic() - t0
        if not ok:
            missed += 1
            dt = args.timeout
            if not wait_for(new, 30):
                sys.exit("change %d never took effect" % i)
        times.append(dt * 1000)
        cur = new
    print("PROPAGATION changes=%d p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f missed=%d"
          % (len(times), pct(times, 50), pct(times, 90), pct(times, 99), max(times), missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
