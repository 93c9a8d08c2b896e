#!/usr/bin/python3
"""bench/redis-load-domains.py — load N tg:domain:<host> hashes into Redis, fast.

Debian packages: redis-server (when the script starts its own), python3.

Writes COUNT domains  h<i>.<zone>  (i = 0..COUNT-1) as hashes
    <prefix>domain:h<i>.<zone>  tenant t<i % TENANTS>  backends <BACKENDS>
with raw RESP commands pipelined over one socket (batches of --batch commands,
each batch's replies read and checked before the next is sent, so neither side
ever blocks the other), then prints the time taken and Redis' used_memory.

Without --port it starts its own redis-server (no persistence) on a free
loopback port in --dir, daemonized, and prints on stdout the line
    REDIS_PORT=<port> REDIS_PID=<pid>
for the caller to eval (the caller stops it: kill $REDIS_PID).  Other output
goes to stderr.

Usage: redis-load-domains.py [--count 1000000] [--backends 127.0.0.1:8081]
           [--zone bench.test] [--prefix tg:] [--port P | --dir DIR]
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_redis(d):
    port = free_port()
    pidfile = os.path.join(d, "redis.pid")
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--daemonize", "yes",
                    "--pidfile", pidfile, "--dir", d,
                    "--logfile", os.path.join(d, "redis.log")], check=True)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        sys.exit("redis-server did not start (see %s/redis.log)" % d)
    for _ in range(100):
        if os.path.exists(pidfile):
            with open(pidfile) as f:
                pid = f.read().strip()
            if pid:
                return port, int(pid)
        time.sleep(0.05)
    sys.exit("redis-server wrote no pid file")


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                sys.exit("redis closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self):
        """One reply; bulk strings returned as bytes, errors raise."""
        line = self._line()
        t = line[:1]
        if t == b"-":
            raise RuntimeError(line[1:].decode())
        if t == b"$":
            n = int(line[1:])
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.s.recv(1 << 20)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if t == b"*":
            return [self.reply() for _ in range(int(line[1:]))]
        return line[1:]

    def call(self, *args):
        self.s.sendall(resp(*args))
        return self.reply()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000000)
    ap.add_argument("--backends", default="127.0.0.1:8081")
    ap.add_argument("--zone", default="bench.test")
    ap.add_argument("--prefix", default="tg:")
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=10000)
    ap.add_argument("--port", type=int, help="use this running Redis")
    ap.add_argument("--dir", help="directory for the Redis started here")
    args = ap.parse_args()

    if args.port:
        port = args.port
    else:
        d = args.dir or tempfile.mkdtemp(prefix="tg-redis.")
        port, pid = start_redis(d)
        print("REDIS_PORT=%d REDIS_PID=%d" % (port, pid), flush=True)

    c = Conn(port)
    t0 = time.monotonic()
    done = 0
    key = (args.prefix + "domain:h%d." + args.zone)
    while done < args.count:
        n = min(args.batch, args.count - done)
        c.s.sendall(b"".join(
            resp("HSET", key % i, "tenant", "t%d" % (i % args.tenants), "backends", args.backends)
            for i in range(done, done + n)))
        for _ in range(n):
            c.reply()          # raises on an error reply
        done += n
    secs = time.monotonic() - t0
    info = c.call("INFO", "memory").decode()
    used = next((l.split(":")[1] for l in info.split("\r\n") if l.startswith("used_memory_human:")), "?")
    print("loaded %d domains in %.1f s (%.0f/s); redis used_memory %s"
          % (done, secs, done / secs, used), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
