"""Redis health while the proxy is idle (issue 3): the heartbeat.

A stopped Redis (SIGSTOP: its TCP connections stay open, the kernel still
answers keepalive probes, nothing is answered) used to go unnoticed for as
long as tollgate sent no command: /healthz said ok and
tollgate_meter_redis_up stayed 1, and the first request for an uncached host
waited the whole --redis-timeout before its 503.  Every Redis connection
tollgate keeps (each worker's routing and invalidation links, the meter's)
now sends PING after about 1 s without a reply, and a PING unanswered within
--redis-timeout drops the link like a late command.

  - a stopped Redis makes an idle tollgate degraded within about
    1 s + --redis-timeout, redis_up 0, and uncached hosts get 503 at once;
    SIGCONT brings ok, redis_up 1 and routing back within a few seconds;
  - an idle tollgate sends about one PING per connection per second (every
    connection, the subscribed one included), not a flood, and client-side
    caching keeps working across those PINGs.
"""

import time

from tglib import *

TIMEOUT = 120

REDIS_TIMEOUT = 0.5


def domain(r, host, backend, tenant="t1"):
    r.cmd("HSET", "tg:domain:" + host, "tenant", tenant, "backends", backend)


def who(tg, host, timeout=5):
    status, headers, _ = http(tg.port, "GET", "/echo", host, timeout=timeout)
    return status, headers.get("x-backend")


def healthz(tg):
    return tg.admin("/healthz")[2]


def redis_up(tg):
    return tg.metrics().get("tollgate_meter_redis_up")


def ping_calls(r):
    info = r.cmd("INFO", "commandstats")
    if isinstance(info, bytes):
        info = info.decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_ping:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def tollgate_clients(r):
    """CLIENT LIST entries (dicts) of every connection but the one asking."""
    text = r.cmd("CLIENT", "LIST")
    if isinstance(text, bytes):
        text = text.decode()
    out = []
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("cmd") != "client|list" and fields.get("cmd") != "client":
            out.append(fields)
    return out


def lookups(r):
    """Route fetches seen by Redis (each reads the host's path rules with LRANGE)."""
    info = r.cmd("INFO", "commandstats")
    if isinstance(info, bytes):
        info = info.decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_lrange:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def test_stopped_redis_makes_an_idle_proxy_degraded_and_resumed_redis_ok_again():
    with Redis() as r, Backend("b1") as b1, \
            Tollgate(redis=r.url, workers=2, args=["--redis-timeout", str(REDIS_TIMEOUT)]) as tg:
        domain(r, "before.test", b1.addr)
        domain(r, "new.test", b1.addr)
        assert who(tg, "before.test") == (200, "b1")
        time.sleep(1.5)                                 # idle: no command in flight
        assert healthz(tg).startswith(b"ok"), healthz(tg)
        assert redis_up(tg) == 1
        r.pause()
        t0 = time.monotonic()
        try:
            bound = scale(1.0 + max(REDIS_TIMEOUT, 1.0) + 1.0)
            wait_until(lambda: b"degraded: redis unreachable" in healthz(tg), bound,
                       "/healthz degraded within %.1f s of SIGSTOP" % bound)
            took = time.monotonic() - t0
            wait_until(lambda: redis_up(tg) == 0, max(0.1, bound - (time.monotonic() - t0)),
                       "tollgate_meter_redis_up 0")
            # The link is known down: no wait for a command's deadline.
            t1 = time.monotonic()
            assert who(tg, "new.test")[0] == 503
            assert time.monotonic() - t1 < REDIS_TIMEOUT / 2, "the 503 waited %.3f s" % (time.monotonic() - t1)
        finally:
            r.resume()
        t0 = time.monotonic()
        wait_until(lambda: healthz(tg).startswith(b"ok"), scale(8), "/healthz ok after SIGCONT")
        wait_until(lambda: redis_up(tg) == 1, scale(8), "tollgate_meter_redis_up 1 after SIGCONT")
        back = time.monotonic() - t0
        wait_until(lambda: who(tg, "new.test") == (200, "b1"), scale(3), "new.test routed after SIGCONT")
        print("degraded %.2f s after SIGSTOP, ok %.2f s after SIGCONT" % (took, back))
        assert "PING timed out" in tg.log_text()


def test_idle_proxy_pings_about_once_a_second_per_connection():
    with Redis() as r, Backend("b1") as b1, Backend("b2") as b2, Tollgate(redis=r.url, workers=2) as tg:
        domain(r, "app.test", b1.addr)
        assert who(tg, "app.test") == (200, "b1")
        time.sleep(1.5)
        links = tollgate_clients(r)
        # Per worker a routing and an invalidation (subscribed) connection, plus the meter's.
        assert len(links) == 5, links
        assert sum(1 for c in links if int(c.get("sub", "0")) > 0) == 2, links
        p0, t0 = ping_calls(r), time.monotonic()
        time.sleep(4)
        p1, t1 = ping_calls(r), time.monotonic()
        rate = (p1 - p0) / (t1 - t0) / len(links)
        assert 0.5 <= rate <= 1.5, "%.2f PING per connection per second" % rate
        # Every connection pings, the subscribed ones too, and none is silent long.
        links = tollgate_clients(r)
        assert len(links) == 5, links
        for c in links:
            assert c.get("cmd") == "ping" and int(c.get("idle", "99")) <= 2, c
        assert healthz(tg).startswith(b"ok")
        # The pongs on the subscribed connections disturbed nothing: cached hosts cost
        # no lookup, and a change still reaches both workers through an invalidation.
        for _ in range(20):
            who(tg, "app.test")
        before = lookups(r)
        for _ in range(20):
            assert who(tg, "app.test") == (200, "b1")
        assert lookups(r) == before, "cache hits went to Redis"
        domain(r, "app.test", b2.addr)
        time.sleep(0.3)
        assert all(who(tg, "app.test") == (200, "b2") for _ in range(20))
        assert "timed out" not in tg.log_text()


def test_a_redis_stall_under_a_second_does_not_drop_idle_links():
    """A Redis that stalls for a few hundred milliseconds (a fork for a
    snapshot, another client's slow script) is not a hung one: the
    heartbeat's PING may wait at least 1 s, so idle links stay up and
    /healthz stays ok, whatever the (short) command timeout.  (The PING had
    the 0.2 s command timeout: every such stall dropped every idle link.)"""
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url, workers=2) as tg:
        domain(r, "x.test", b1.addr)
        assert who(tg, "x.test") == (200, "b1")
        time.sleep(1.5)
        mark = len(tg.log_text())
        for _ in range(4):                   # each pause covers about one PING of each idle link
            r.pause()
            time.sleep(0.8)
            r.resume()
            time.sleep(0.3)
        time.sleep(1.0)
        log = tg.log_text()[mark:]
        assert "timed out" not in log and "lost" not in log, log[-1500:]
        assert healthz(tg).startswith(b"ok"), healthz(tg)
        assert who(tg, "x.test") == (200, "b1")
