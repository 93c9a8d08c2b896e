"""Redis routing end to end (issue 3; schema in ../shared/CONTRACT.md).

Each test starts a real redis-server, scripted backends and tollgate with
--redis, writes routing data with plain Redis commands (as another team's tool
would) and checks which backend answers, through the proxy:

  matching order (exact, wildcard with exactly one label, patterns with
  numbered and named captures), path rules (prefix and regex, first match
  wins), live updates within 1 s without any PUBLISH, the events channel,
  a hot lookup costing no Redis command, coalescing of concurrent misses,
  Redis killed and restarted mid-traffic, Redis unreachable at start, a
  SIGSTOP'd Redis (503 within 1 s for uncached hosts), 1,000 domains written
  while traffic flows, round_robin, least_conn, passive health failover,
  all backends down (502) and bad data (wrong types, missing fields, bad
  addresses, bad patterns and templates, 1 MB values) affecting only the
  hosts concerned.
"""

import os
import socket
import struct
import subprocess
import threading
import time

import tglib

from tglib import *

TIMEOUT = 120


# ---------------------------------------------------------------- helpers

def domain(r, host, tenant, backends, **fields):
    args = ["tenant", tenant, "backends", backends]
    for k, v in fields.items():
        args += [k, str(v)]
    r.cmd("HSET", "tg:domain:" + host, *args)


def who(tg, host, path="/echo", timeout=5):
    """(status, X-Backend or None, headers) of one request through the proxy."""
    status, headers, _ = http(tg.port, "GET", path, host, timeout=timeout)
    return status, headers.get("x-backend"), headers


def calls(r, *cmds):
    """Total calls of the given commands (lowercase) from INFO commandstats."""
    info = r.cmd("INFO", "commandstats")
    if isinstance(info, bytes):
        info = info.decode()
    total = 0
    for line in info.splitlines():
        for c in cmds:
            if line.startswith("cmdstat_%s:" % c):
                total += int(line.split("calls=")[1].split(",")[0])
    return total


def lookups(r):
    """Route fetches seen by Redis: each one reads the host's path rules (LRANGE).
    HGETALL is not counted: the meter's flush script runs HGETALL too."""
    return calls(r, "lrange")


def metric(tg, name):
    return tg.metrics().get(name)


def wait_backend(tg, host, want, timeout, path="/echo"):
    """Waits until host is served by backend `want` (a name, or a status int); returns the seconds it took."""
    t0 = time.monotonic()

    def ok():
        status, name, _ = who(tg, host, path)
        return name == want if isinstance(want, str) else status == want
    wait_until(ok, timeout, "%s -> %s" % (host, want), interval=0.02)
    return time.monotonic() - t0


def tracking_ready(tg, r, host):
    """Waits until client-side caching works in every worker: a cached host costs no lookup
    (20 requests on new connections reach both workers)."""
    def ready():
        for _ in range(20):
            who(tg, host)
        before = lookups(r)
        for _ in range(20):
            who(tg, host)
        return lookups(r) == before
    wait_until(ready, scale(10), "cache hits without Redis round trips")


# ---------------------------------------------------------------- matching

def test_exact_host_normalised_unknown_invalid():
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url) as tg:
        domain(r, "app.example.test", "t1", b1.addr)
        for h in ("app.example.test", "APP.Example.TEST", "app.example.test.", "app.example.test:8080",
                  "App.Example.Test.:80"):
            status, name, _ = who(tg, h)
            assert (status, name) == (200, "b1"), (h, status, name)
        status, _, _ = who(tg, "nope.example.test")
        assert status == 404
        for bad in ("bad host", "a..b", "x:99999", "[::1"):
            status, _, _ = who(tg, bad)
            assert status == 400, (bad, status)


def test_wildcard_matches_exactly_one_label():
    with Redis() as r, Backend("wild") as bw, Backend("exact") as be, Tollgate(redis=r.url) as tg:
        domain(r, "*.sites.test", "t1", bw.addr)
        domain(r, "special.sites.test", "t2", be.addr)
        assert who(tg, "a.sites.test")[:2] == (200, "wild")
        assert who(tg, "zz-9.sites.test")[:2] == (200, "wild")
        assert who(tg, "special.sites.test")[:2] == (200, "exact")     # exact beats wildcard
        assert who(tg, "a.b.sites.test")[0] == 404                      # two labels: no
        assert who(tg, "sites.test")[0] == 404                          # zero labels: no


def test_patterns_with_numbered_and_named_captures():
    with Redis() as r, Backend("pr-1") as b1, Backend("pr-2") as b2, Backend("api") as ba, \
            Backend("exact") as be, Tollgate(redis=r.url) as tg:
        p1, p2, pa = b1.port, b2.port, ba.port
        # Template builds the backend from captures: ports 1xxxx-style would need DNS, so
        # the capture selects the last digits of a port prefix computed here.
        r.cmd("RPUSH", "tg:patterns",
              r"pr-(\d+)\.preview\.test previews 127.0.0.1:$1",
              r"(?<svc>[a-z]+)-(?<env>prod)\.apps\.test apps 127.0.0.1:${svc}",   # bad: "api" is no port
              r"(?<svc>[a-z]+)-(?<env>stage)\.apps\.test apps 127.0.0.1:%d" % pa,
              r"x(\d)\.broken\.test t 127.0.0.1:$2")
        domain(r, "pr-%d.preview.test" % p2, "t-exact", be.addr)
        assert who(tg, "pr-%d.preview.test" % p1)[:2] == (200, "pr-1")
        assert who(tg, "pr-%d.preview.test" % p2)[:2] == (200, "exact")    # exact before patterns
        assert who(tg, "pr-x.preview.test")[0] == 404
        assert who(tg, "api-stage.apps.test")[:2] == (200, "api")
        assert who(tg, "api-prod.apps.test")[0] == 502                      # template gives a bad address
        assert who(tg, "x1.broken.test")[0] == 502                          # template names a missing capture
        assert who(tg, "pr-%d.preview.test" % p1)[:2] == (200, "pr-1")      # the others keep working
        # Named captures substituted: a template using ${env} as a host label via localhost.
        r.cmd("LPUSH", "tg:patterns", r"(?<name>[a-z]+)\.local\.test loc ${name}.localhost:%d" % p2)
        wait_backend(tg, "web.local.test", "pr-2", 2)


def test_path_rules_see_the_path_as_the_backend_will():
    """A path rule is not stepped around by another spelling of its path:
    `//api/`, `/x/../api/`, `/%61pi/` match `/api/` as nginx's locations
    would (RFC 3986 §6.2.2 normalisation); the target still reaches the
    backend as sent.  (They were compared byte for byte and went to the
    domain's default backends.)"""
    with Redis() as r, Backend("default") as bd, Backend("api") as ba, Tollgate(redis=r.url) as tg:
        domain(r, "norm.test", "t1", bd.addr)
        r.cmd("RPUSH", "tg:paths:norm.test", "/api/ " + ba.addr)
        for path in ("/api/x", "//api/x", "/x/../api/x", "/%61pi/x", "/./api//x"):
            assert who(tg, "norm.test", path)[1] == "api", (path, who(tg, "norm.test", path))
        for path in ("/apix/", "/api%2Fx", "/Api/x"):
            assert who(tg, "norm.test", path)[1] == "default", (path, who(tg, "norm.test", path))
        # /echo/../api/x is /api/x to the rule; the backend echoes what it got
        st, h, body = http(tg.port, "GET", "/echo/../api/x", "norm.test")
        assert st == 200 and h.get("x-backend") == "api", (st, h)
        assert b'"target": "/echo/../api/x"' in body, body[:300]


def test_path_rules_prefix_regex_first_match():
    with Redis() as r, Backend("default") as bd, Backend("api") as ba, Backend("img") as bi, \
            Backend("wild") as bw, Tollgate(redis=r.url) as tg:
        domain(r, "shop.test", "t1", bd.addr)
        r.cmd("RPUSH", "tg:paths:shop.test",
              "/api/v2 " + bi.addr,                  # first match wins: before /api
              "/api " + ba.addr,
              r"~^/static/.*\.(png|jpg)$ " + bi.addr)
        cases = [("/", "default"), ("/api", "api"), ("/api/v1/x", "api"), ("/api/v2/x", "img"),
                 ("/static/a.png", "img"), ("/static/a.png?v=2", "img"), ("/static/a.css", "default"),
                 ("/apix", "api")]
        for path, want in cases:
            # The backends answer 404 for paths they do not serve: only who answered matters.
            assert who(tg, "shop.test", path)[1] == want, (path, who(tg, "shop.test", path))
        # A wildcard match reads the paths of the wildcard key.
        domain(r, "*.shops.test", "t2", bd.addr)
        r.cmd("RPUSH", "tg:paths:*.shops.test", "/api " + bw.addr)
        assert who(tg, "a.shops.test", "/api/x")[1] == "wild"
        assert who(tg, "a.shops.test", "/other")[1] == "default"
        # A path rule list that is bad data fails that host only.
        domain(r, "badpaths.test", "t3", bd.addr)
        r.cmd("RPUSH", "tg:paths:badpaths.test", "~(unclosed " + ba.addr)
        assert who(tg, "badpaths.test", "/")[0] == 502
        assert who(tg, "shop.test", "/api")[1] == "api"


# ---------------------------------------------------------------- live updates

def test_live_update_within_one_second_without_publish():
    with Redis() as r, Backend("old") as bo, Backend("new") as bn, Tollgate(redis=r.url) as tg:
        domain(r, "live.test", "t1", bo.addr)
        assert who(tg, "live.test")[:2] == (200, "old")
        tracking_ready(tg, r, "live.test")
        worst = 0.0
        for i in range(5):
            target, name = (bn, "new") if i % 2 == 0 else (bo, "old")
            r.cmd("HSET", "tg:domain:live.test", "backends", target.addr)
            worst = max(worst, wait_backend(tg, "live.test", name, scale(2)))
        assert worst < 1.0, "a change took %.3fs" % worst
        # A host cached as unknown appears within 1 s, a deleted one disappears.
        assert who(tg, "later.test")[0] == 404
        domain(r, "later.test", "t1", bn.addr)
        assert wait_backend(tg, "later.test", "new", scale(2)) < 1.0
        r.cmd("DEL", "tg:domain:live.test")
        assert wait_backend(tg, "live.test", 404, scale(2)) < 1.0
        # Path rules and patterns are watched too.
        r.cmd("RPUSH", "tg:paths:later.test", "/p " + bo.addr)
        assert wait_backend(tg, "later.test", "old", scale(2), path="/p") < 1.0
        assert who(tg, "pat1.test")[0] == 404
        r.cmd("RPUSH", "tg:patterns", r"pat\d\.test t 127.0.0.1:%d" % bo.port)
        assert wait_backend(tg, "pat1.test", "old", scale(2)) < 1.0


def test_hot_lookups_cost_no_redis_command_and_events_channel_refreshes():
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url) as tg:
        domain(r, "hot.test", "t1", b1.addr)
        tracking_ready(tg, r, "hot.test")
        before = lookups(r)
        for _ in range(50):
            assert who(tg, "hot.test")[:2] == (200, "b1")
        assert lookups(r) == before, "cache hits went to Redis"
        assert metric(tg, "tollgate_route_cache_hits_total") >= 50
        # A hint on the events channel makes the workers revalidate (one round trip each).
        r.cmd("PUBLISH", "tg:events", "domain hot.test")
        time.sleep(0.2)
        for _ in range(10):
            who(tg, "hot.test")
        assert lookups(r) > before, "the events hint was ignored"


def test_concurrent_misses_share_one_round_trip():
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url, workers=2) as tg:
        domain(r, "warm.test", "t1", b1.addr)
        tracking_ready(tg, r, "warm.test")
        domain(r, "cold.test", "t1", b1.addr)
        time.sleep(0.1)
        # Hold Redis a moment so that every request arrives while the first lookup waits.
        before = lookups(r)
        r.pause()
        results = []
        threads = [threading.Thread(target=lambda: results.append(who(tg, "cold.test", timeout=10)[:2]))
                   for _ in range(40)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        r.resume()
        for t in threads:
            t.join()
        # The pause may outlast the 200 ms deadline: then those lookups answer 503 and a retry follows.
        ok = sum(1 for s in results if s == (200, "b1"))
        assert all(s[0] in (200, 503) for s in results), results
        wait_backend(tg, "cold.test", "b1", 3)
        n = lookups(r) - before
        # Per fetch: the paths of the exact and the wildcard key; 40 requests, 2 workers.
        assert n <= 12, "%d fetches' LRANGE for 40 concurrent requests (%d ok)" % (n, ok)
        assert metric(tg, "tollgate_route_coalesced_total") >= 1


# ---------------------------------------------------------------- Redis failures

def test_redis_killed_and_restarted_mid_traffic():
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url) as tg:
        domain(r, "cached.test", "t1", b1.addr)
        domain(r, "uncached.test", "t1", b1.addr)
        assert who(tg, "cached.test")[:2] == (200, "b1")
        stop = threading.Event()
        bad = []

        def traffic():
            while not stop.is_set():
                s, n, _ = who(tg, "cached.test")
                if (s, n) != (200, "b1"):
                    bad.append(s)
                time.sleep(0.01)
        t = threading.Thread(target=traffic)
        t.start()
        try:
            time.sleep(0.3)
            r.kill()
            time.sleep(0.5)
            status, _, headers = who(tg, "uncached.test")
            assert status == 503 and "retry-after" in headers, (status, headers)
            _, _, body = tg.admin("/healthz")
            assert b"degraded" in body, body
            time.sleep(1.0)
            r.start()
            # Redis restarted empty: write the data again, as a control plane would.
            domain(r, "cached.test", "t1", b1.addr)
            domain(r, "uncached.test", "t1", b1.addr)
            wait_backend(tg, "uncached.test", "b1", scale(10))
            wait_until(lambda: b"degraded" not in tg.admin("/healthz")[2], scale(10), "healthz ok")
        finally:
            stop.set()
            t.join()
        assert not bad, "cached host failed %d times while Redis was down: %s" % (len(bad), bad[:5])


def test_redis_unreachable_at_start_then_recovers():
    port = free_port()
    with Backend("b1") as b1, Tollgate(redis="redis://127.0.0.1:%d" % port, routes=["static.test=" + b1.addr]) as tg:
        status, _, headers = who(tg, "dyn.test")
        assert status == 503 and headers.get("retry-after"), (status, headers)
        assert who(tg, "static.test")[:2] == (200, "b1")                 # static routes still work
        assert b"degraded" in tg.admin("/healthz")[2]
        with Redis(port=port) as r:
            domain(r, "dyn.test", "t1", b1.addr)
            wait_backend(tg, "dyn.test", "b1", scale(10))
            wait_until(lambda: b"degraded" not in tg.admin("/healthz")[2], scale(10), "healthz ok")


def test_stopped_redis_gives_503_within_one_second_for_uncached_hosts():
    # One worker: caches are per worker, and "cached" must mean cached where the request lands.
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url, workers=1) as tg:
        domain(r, "cached.test", "t1", b1.addr)
        domain(r, "new.test", "t1", b1.addr)
        assert who(tg, "cached.test")[:2] == (200, "b1")
        r.pause()
        try:
            for i in range(3):
                t0 = time.monotonic()
                status, _, headers = who(tg, "new.test", timeout=5)
                took = time.monotonic() - t0
                assert status == 503 and "retry-after" in headers, status
                assert took < 1.0, "503 took %.3fs" % took
                t0 = time.monotonic()
                assert who(tg, "cached.test")[:2] == (200, "b1")
                assert time.monotonic() - t0 < 1.0
        finally:
            r.resume()
        wait_backend(tg, "new.test", "b1", scale(10))


def test_thousand_domains_written_while_traffic_flows():
    with Redis() as r, Backend("b1") as b1, Backend("b2") as b2, Tollgate(redis=r.url) as tg:
        domain(r, "steady.test", "t1", b1.addr)
        assert who(tg, "steady.test")[:2] == (200, "b1")
        stop = threading.Event()
        bad = []
        count = [0]

        def traffic():
            while not stop.is_set():
                s, n, _ = who(tg, "steady.test")
                count[0] += 1
                if (s, n) != (200, "b1"):
                    bad.append((s, n))

        t = threading.Thread(target=traffic)
        t.start()
        try:
            for batch in range(10):
                r.pipeline(*[("HSET", "tg:domain:site%d.bulk.test" % i, "tenant", "t%d" % (i % 7),
                              "backends", b2.addr) for i in range(batch * 100, batch * 100 + 100)])
        finally:
            stop.set()
            t.join()
        assert not bad, bad[:5]
        assert count[0] > 0
        for i in range(0, 1000, 37):
            assert who(tg, "site%d.bulk.test" % i)[:2] == (200, "b2"), i
        assert who(tg, "site999.bulk.test")[:2] == (200, "b2")


# ---------------------------------------------------------------- balancing and health

def test_round_robin_spreads_evenly():
    with Redis() as r, Backend("a") as a, Backend("b") as b, Backend("c") as c, \
            Tollgate(redis=r.url, workers=1) as tg:
        domain(r, "rr.test", "t1", ",".join(x.addr for x in (a, b, c)))
        seen = {}
        for _ in range(30):
            s, n, _ = who(tg, "rr.test")
            assert s == 200
            seen[n] = seen.get(n, 0) + 1
        assert seen == {"a": 10, "b": 10, "c": 10}, seen


def test_least_conn_avoids_busy_backend():
    with Redis() as r, Backend("a") as a, Backend("b") as b, Tollgate(redis=r.url, workers=1) as tg:
        domain(r, "lc.test", "t1", "%s,%s" % (a.addr, b.addr), lb="least_conn")
        assert who(tg, "lc.test")[0] == 200
        slow = []
        t = threading.Thread(target=lambda: slow.append(who(tg, "lc.test", "/sleep/1.5")[:2]))
        t.start()
        time.sleep(0.3)
        quick = [who(tg, "lc.test")[1] for _ in range(8)]
        t.join()
        busy = slow[0][1]
        assert slow[0][0] == 200
        assert busy not in quick and len(set(quick)) == 1, (busy, quick)
        # Round robin would alternate instead:
        domain(r, "rr2.test", "t1", "%s,%s" % (a.addr, b.addr))
        names = [who(tg, "rr2.test")[1] for _ in range(4)]
        assert len(set(names)) == 2, names


def test_least_conn_counts_an_exchange_until_it_ends():
    """A backend is busy for least_conn from the pick until its exchange ends
    -- not until the response head, and exactly once however it ends.  A
    stream still flowing keeps its backend busy; a client gone before the
    head, or a body cut short, gives the count back once.  (The count ended
    at the head, a body cut after it ended it a second time -- for another,
    still running request -- and a client that left before the head never
    ended it: least_conn then avoided that backend for good.)"""
    with Redis() as r, Backend("a") as a, Backend("b") as b, Tollgate(redis=r.url, workers=1) as tg:
        domain(r, "lc.test", "t1", "%s,%s" % (a.addr, b.addr), lb="least_conn")
        domain(r, "only-a.test", "t1", a.addr)      # the same backend a, counted once per address
        assert who(tg, "lc.test")[0] == 200

        # A stream whose head has come but whose body still flows.
        s = RawConn(tg.port)
        s.send(b"GET /sse?n=8&interval=0.25 HTTP/1.1\r\nHost: lc.test\r\n\r\n")
        streaming = s.read_head().header("x-backend")
        quick = [who(tg, "lc.test")[1] for _ in range(6)]
        assert streaming not in quick, (streaming, quick)
        s.close()

        # Clients that leave before the head: their backend is free again.
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", tg.port))
            c.sendall(b"GET /sleep/1.5 HTTP/1.1\r\nHost: lc.test\r\n\r\n")
            time.sleep(0.2)
            c.close()
        time.sleep(0.3)
        names = [who(tg, "lc.test")[1] for _ in range(6)]
        assert sorted(set(names)) == ["a", "b"], names

        # a busy with one request; another to a is cut mid-body: a stays busy.
        t = threading.Thread(target=lambda: who(tg, "only-a.test", "/sleep/2"))
        t.start()
        time.sleep(0.3)
        try:
            http(tg.port, "GET", "/truncate/200000?rst=1", "only-a.test", timeout=3)
        except Exception:
            pass                                   # the cut body: the client's connection ends
        time.sleep(0.2)
        quick = [who(tg, "lc.test")[1] for _ in range(4)]
        t.join()
        assert quick == ["b"] * 4, quick


def test_passive_health_failover_and_all_down():
    dead1, dead2 = free_port(), free_port()
    with Redis() as r, Backend("live") as live, Tollgate(redis=r.url, workers=1) as tg:
        domain(r, "fo.test", "t1", "127.0.0.1:%d,%s" % (dead1, live.addr))
        for _ in range(10):
            assert who(tg, "fo.test")[:2] == (200, "live")
        # All backends refuse: 502.
        domain(r, "down.test", "t1", "127.0.0.1:%d,127.0.0.1:%d" % (dead1, dead2))
        status, _, _ = who(tg, "down.test")
        assert status == 502, status


# ---------------------------------------------------------------- bad data

def test_bad_data_fails_only_the_host_concerned():
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url) as tg:
        domain(r, "good.test", "t1", b1.addr)
        r.cmd("SET", "tg:domain:string.test", "not a hash")
        r.cmd("HSET", "tg:domain:notenant.test", "backends", b1.addr)
        r.cmd("HSET", "tg:domain:nobackends.test", "tenant", "t1")
        r.cmd("HSET", "tg:domain:badaddr.test", "tenant", "t1", "backends", "127.0.0.1")
        r.cmd("HSET", "tg:domain:badaddr2.test", "tenant", "t1", "backends", "127.0.0.1:80,,x")
        r.cmd("HSET", "tg:domain:huge.test", "tenant", "t1", "backends", "1" * (1 << 20))
        r.cmd("HSET", "tg:domain:badlb.test", "tenant", "t1", "backends", b1.addr, "lb", "random")
        r.cmd("HSET", "tg:domain:badtenant.test", "tenant", "t9", "backends", b1.addr)
        r.cmd("HSET", "tg:tenant:t9", "cap_bytes", "lots", "suspended", "maybe")
        r.cmd("SET", "tg:paths:wrongpaths.test", "x")
        domain(r, "wrongpaths.test", "t1", b1.addr)
        for h in ("string.test", "notenant.test", "nobackends.test", "badaddr.test", "badaddr2.test", "huge.test",
                  "wrongpaths.test"):
            for _ in range(3):
                status, _, _ = who(tg, h)
                assert status == 502, (h, status)
                assert who(tg, "good.test")[:2] == (200, "b1")
        # Bad optional fields / tenant fields are logged and treated as absent.
        assert who(tg, "badlb.test")[:2] == (200, "b1")
        assert who(tg, "badtenant.test")[:2] == (200, "b1")
        assert metric(tg, "tollgate_route_bad_data_total") >= 8
        log = tg.log_text()
        assert "tg:domain:string.test" in log and "tg:domain:huge.test" in log, log[-2000:]
        # Rate-limited: each key reported once although asked several times.
        assert log.count("tg:domain:notenant.test") == 1, log.count("tg:domain:notenant.test")
        assert "1111111111111111111111111111111111111111" not in log          # no 1 MB log line


def test_a_128_mib_routing_value_fails_only_its_host():
    """Redis keeps values of up to 512 MB; tollgate reads at most 64 KiB of one.
    A 128 MiB path rule gets its host a 502 (invalid routing data, reported
    with its key) and nothing else: the lookups pipelined behind it on the same
    Redis connection are answered and tollgate's memory does not grow by the
    value.  (Redis took 0.3 s to build that reply, longer than --redis-timeout:
    every pending lookup failed, uncached hosts got 503, /healthz said degraded,
    and each new request for the host did it again.)"""
    # One worker: every lookup shares the one routing connection.
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url, workers=1) as tg:
        hosts = ["h%d.test" % i for i in range(16)]
        for h in ["big.test"] + hosts + ["warm.test"]:
            domain(r, h, "t1", b1.addr)
        r.cmd("EVAL", "return redis.call('RPUSH', KEYS[1], string.rep('x', tonumber(ARGV[1])))",
              "1", "tg:paths:big.test", str(128 << 20), timeout=60)
        r.cmd("EVAL", "return redis.call('HSET', KEYS[1], 'note', string.rep('x', tonumber(ARGV[1])))",
              "1", "tg:tenant:t9", str(40 << 20), timeout=60)
        # Those scripts block Redis for seconds: the idle links' heartbeat
        # rightly saw it hang.  Wait for the links to be back, then look only
        # at what the log says from there.
        wait_until(lambda: b"degraded" not in tg.admin("/healthz")[2], scale(15), "/healthz ok again")
        mark = len(tg.log_text())
        assert who(tg, "warm.test")[:2] == (200, "b1")
        hwm0 = tg.hwm_kb()
        status = {}

        def get(h):
            status[h] = who(tg, h, timeout=60)[0]
        first = threading.Thread(target=get, args=("big.test",))
        first.start()
        time.sleep(0.02)                      # the others queue behind its reply
        others = [threading.Thread(target=get, args=(h,)) for h in hosts]
        for t in others:
            t.start()
        for t in others + [first]:
            t.join()
        assert status["big.test"] == 502, status
        assert all(status[h] == 200 for h in hosts), status
        assert b"degraded" not in tg.admin("/healthz")[2]
        grown = tg.hwm_kb() - hwm0
        assert grown < 32 * 1024, "peak RSS grew by %d KiB" % grown
        log = tg.log_text()[mark:]
        assert "tg:paths:big.test" in log and "more than 33554432 bytes" in log, log[-2000:]
        assert "timed out" not in log, log[-2000:]
        # Remembered as bad data like any other invalid value: asked again, 502 again.
        for _ in range(3):
            assert who(tg, "big.test")[0] == 502
            assert who(tg, "h0.test")[:2] == (200, "b1")
        # A tenant policy hash that large is not read either: the host is served, without a policy.
        domain(r, "t9.test", "t9", b1.addr)
        assert who(tg, "t9.test")[:2] == (200, "b1")
        log = tg.log_text()[mark:]
        assert "tg:tenant:t9" in log and "timed out" not in log, log[-2000:]


def test_a_hash_of_very_many_small_fields_is_not_read_and_fails_only_its_host():
    """A domain hash of 400,000 tiny fields (23 MB, under the 32 MiB limit)
    kept Redis busy ~0.4 s per read, past redis-timeout: its host got 503
    and so did lookups of other hosts pipelined behind it.  More than 4096
    fields or elements is refused unread (HLEN/LLEN first, O(1)): bad data,
    502 for that host alone, remembered as such."""
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url, workers=1) as tg:
        hosts = ["m%d.test" % i for i in range(8)]
        for h in hosts + ["fat.test"]:
            domain(r, h, "t1", b1.addr)
        r.cmd("EVAL", "for i = 1, tonumber(ARGV[1]) do redis.call('HSET', KEYS[1], 'f' .. i, '1') end",
              "1", "tg:domain:fat.test", "400000", timeout=120)
        wait_until(lambda: b"degraded" not in tg.admin("/healthz")[2], scale(15), "/healthz ok again")
        mark = len(tg.log_text())
        status = {}

        def get(h):
            status[h] = who(tg, h, timeout=30)[0]
        first = threading.Thread(target=get, args=("fat.test",))
        first.start()
        others = [threading.Thread(target=get, args=(h,)) for h in hosts]
        for t in others:
            t.start()
        for t in others + [first]:
            t.join()
        assert status["fat.test"] == 502, status
        assert all(status[h] == 200 for h in hosts), status
        log = tg.log_text()[mark:]
        assert "tg:domain:fat.test" in log and "more than 4096 fields or elements" in log, log[-2000:]
        assert "timed out" not in log, log[-2000:]
        assert who(tg, "fat.test")[0] == 502


def test_a_long_valid_path_list_is_read():
    """The size limit on routing keys (32 MiB) is far above valid data: 1100
    rules of 8 KB (a 9 MB list) are read, the first 1024 used.  (At 8 MiB the
    whole list was refused: MEMORY USAGE counts the elements LRANGE skips.)"""
    # A generous --redis-timeout: parsing 9 MB takes a while under valgrind.
    with Redis() as r, Backend("b1") as b1, Backend("b2") as b2, \
            Tollgate(redis=r.url, args=["--redis-timeout", "10"]) as tg:
        domain(r, "long.test", "t1", b1.addr)
        r.cmd("RPUSH", "tg:paths:long.test",
              *["/r%04d%s %s" % (i, "x" * 8000, b2.addr) for i in range(1100)], timeout=60)
        assert who(tg, "long.test", timeout=30)[:2] == (200, "b1")
        assert who(tg, "long.test", path="/r1023" + "x" * 8000)[1] == "b2"     # the backend's 404 for that path
        assert who(tg, "long.test", path="/r1024" + "x" * 8000)[1] == "b1"     # past the 1024th: unused
        assert "tg:paths:long.test" not in tg.log_text(), tg.log_text()[-2000:]


def test_bad_patterns_and_wrong_pattern_type():
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url) as tg:
        r.cmd("RPUSH", "tg:patterns",
              "(unclosed t 127.0.0.1:1",                     # does not compile: skipped
              r"(a|aa)+c\.slow\.test t 127.0.0.1:1",         # backtracks: match limit
              r"ok(\d)\.test t " + b1.addr)
        assert who(tg, "ok1.test")[:2] == (200, "b1")
        t0 = time.monotonic()
        status, _, _ = who(tg, "a" * 60 + "cx.slow.test")
        assert time.monotonic() - t0 < 2.0
        assert status in (404, 502), status
        assert who(tg, "ok2.test")[:2] == (200, "b1")
        # tg:patterns of the wrong type: hosts that reach the pattern stage get 502, exact hosts still work.
        domain(r, "exact.test", "t1", b1.addr)
        r.cmd("DEL", "tg:patterns")
        r.cmd("SET", "tg:patterns", "oops")
        wait_backend(tg, "ok3.test", 502, scale(3))
        assert who(tg, "exact.test")[:2] == (200, "b1")


def test_a_128_byte_tenant_id_is_logged_whole():
    """Tenant ids are up to 128 bytes (docs/redis-schema.md); the access log
    shows them whole (it cut them at 63)."""
    tenant = "t" + "x" * 126 + "z"
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url) as tg:
        domain(r, "long.example.test", tenant, b1.addr)
        assert who(tg, "long.example.test")[:2] == (200, "b1")
        line = wait_until(lambda: [l for l in tg.access_log_lines() if "long.example.test" in l], 3,
                          "the access log line")[0]
        assert line.split()[10] == tenant, line


def test_redirect_https_keeps_the_whole_target_and_drops_the_port():
    """redirect_https answers 308 to https://<host><path and query>: the
    port of the Host goes (the https URL has the default one), the target
    comes whole however long (it was cut at 191 bytes, the host at 95), and
    of an absolute-form target only the part after the authority is kept."""
    long_label = "l" * 60
    host = ".".join([long_label] * 3) + ".test"      # 188 bytes
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url) as tg:
        domain(r, host, "t1", b1.addr, redirect_https=1)
        path = "/" + "p" * 400 + "?q=" + "v" * 300
        resp = raw(tg.port, ("GET %s HTTP/1.1\r\nHost: %s:8080\r\nConnection: close\r\n\r\n"
                             % (path, host.upper())).encode())
        assert resp.startswith(b"HTTP/1.1 308"), resp[:200]
        loc = [l for l in resp.split(b"\r\n") if l.lower().startswith(b"location:")]
        assert loc == [("Location: https://%s%s" % (host.upper(), path)).encode()], loc
        resp = raw(tg.port, ("GET http://%s/a/b?c=d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                             % (host, host)).encode())
        assert resp.startswith(b"HTTP/1.1 308"), resp[:200]
        assert ("\r\nLocation: https://%s/a/b?c=d\r\n" % host).encode() in resp, resp[:400]
        # an absolute-form target without a path: "/" and the query
        for target, want in (("http://%s" % host, "/"), ("http://%s?x=1" % host, "/?x=1")):
            resp = raw(tg.port, ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                                 % (target, host)).encode())
            assert resp.startswith(b"HTTP/1.1 308"), (target, resp[:200])
            assert ("\r\nLocation: https://%s%s\r\n" % (host, want)).encode() in resp, (target, resp[:400])


def test_redis_on_a_unix_socket_with_password_and_database():
    """--redis unix://:password@/path?db=N (CONTRACT's unix socket, with the
    AUTH and database number issue 3 asks for; tollgate-ctl took it, the
    proxy's config check refused it): the proxy routes from database 2."""
    import subprocess
    sock = os.path.join(tmpdir(), "r.sock")
    with Redis(args=["--unixsocket", sock, "--unixsocketperm", "700"]) as r, Backend("b1") as b1:
        r.cmd("CONFIG", "SET", "requirepass", "p@ss:w/rd")
        subprocess.run(["redis-cli", "-s", sock, "--no-auth-warning", "-a", "p@ss:w/rd", "-n", "2",
                        "HSET", "tg:domain:app.test", "tenant", "t1", "backends", b1.addr],
                       check=True, capture_output=True, timeout=10)
        url = "unix://:p%40ss%3Aw%2Frd@" + sock + "?db=2"
        with Tollgate(redis=url) as tg:
            wait_until(lambda: who(tg, "app.test")[:2] == (200, "b1"), scale(5), "app.test routed from db 2")


def test_patterns_past_the_1024th_are_reported_not_silently_dropped():
    """tollgate reads the first 1,024 entries of tg:patterns; a longer list
    (written without tollgate-ctl, which refuses it) is logged as bad data
    instead of ignored without a word."""
    with Redis() as r, Backend("b1") as b1, Tollgate(redis=r.url) as tg:
        lines = ["^h%d\\.test$ t %s" % (i, b1.addr) for i in range(1029)] + ["^late\\.test$ t %s" % b1.addr]
        for i in range(0, len(lines), 200):
            r.cmd("RPUSH", "tg:patterns", *lines[i:i + 200])
        assert who(tg, "h0.test")[:2] == (200, "b1")
        assert who(tg, "late.test")[0] == 404
        wait_until(lambda: "more than 1024 entries" in tg.log_text(), scale(3), "the long list reported")


# ---------------------------------------------------------------- backends named by DNS

class _TinyDNS:
    """A UDP DNS server on loopback answering A queries from self.answers
    (name -> IPv4 text, or None for NXDOMAIN) with a TTL of 1 s; any other
    query type gets an empty answer."""

    def __init__(self):
        self.answers = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                q, peer = self.sock.recvfrom(512)
            except OSError:
                return
            i, labels = 12, []
            while i < len(q) and q[i]:
                labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
                i += 1 + q[i]
            qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
            question = q[12:i + 5]
            name = ".".join(labels).lower()
            addr = self.answers.get(name)
            rcode = 3 if addr is None else 0
            answer = b""
            if rcode == 0 and qtype == 1:
                answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 4) + socket.inet_aton(addr)
            head = q[:2] + struct.pack("!HHHHH", 0x8180 | rcode, 1, 1 if answer else 0, 0, 0)
            self.sock.sendto(head + question + answer, peer)

    def close(self):
        self.sock.close()


def test_a_backend_named_by_dns_follows_its_ttl_and_a_failed_name_its_negative_ttl():
    """A route whose backend is a DNS name lives no longer than the name's
    answer (docs/redis-schema.md: cached for their DNS TTL), and a route
    that failed for a name that did not resolve no longer than
    route-negative-ttl.  (Both lived route-cache-ttl, 60 s: a backend
    moved by DNS kept getting traffic at its old address for a minute.)
    Runs tollgate in its own mount namespace with /etc/resolv.conf bound to
    a file naming a DNS server of the test's (root only)."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        raise Skip("needs root and unshare -m to give tollgate its own /etc/resolv.conf")
    dns = _TinyDNS()
    resolv = os.path.join(tmpdir(), "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1:%d\n" % dns.port)
    wrapper = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv]
    saved = list(tglib.WRAPPER)
    tglib.WRAPPER[:0] = wrapper
    port = free_port()
    try:
        dns.answers["svc.test"] = "127.0.0.1"
        dns.answers["svc2.test"] = None
        with Redis() as r, Backend("a", port=port) as a, Backend("b", port=port, host="127.0.0.2") as b, \
                Tollgate(redis=r.url, workers=1, args=["--route-negative-ttl", "1"]) as tg:
            domain(r, "dns.test", "t1", "svc.test:%d" % port)
            assert who(tg, "dns.test")[:2] == (200, "a")
            dns.answers["svc.test"] = "127.0.0.2"       # the backend moved (TTL 1 s)
            wait_until(lambda: who(tg, "dns.test")[1] == "b", scale(5), "traffic at the name's new address")
            domain(r, "dns2.test", "t1", "svc2.test:%d" % port)
            assert who(tg, "dns2.test")[0] == 502          # the name does not resolve
            dns.answers["svc2.test"] = "127.0.0.1"
            wait_until(lambda: who(tg, "dns2.test")[:2] == (200, "a"), scale(5), "the name resolving again")
    finally:
        tglib.WRAPPER[:] = saved
        dns.close()


def test_routes_catch_up_within_about_a_second_of_redis_coming_back():
    """Redis away for a while (a restart, a failover) comes back holding
    other routes: tollgate redials at least once a second (backoff 100 ms
    doubling to 1 s), so the new routes are served within about a second
    of its return -- the contract's 1 s for a change.  (The backoff doubled
    to 5 s: the old routes went on for up to 5 s.)"""
    with Redis() as r, Backend("old") as old, Backend("new") as new, Tollgate(redis=r.url, workers=1) as tg:
        domain(r, "moved.test", "t1", old.addr)
        assert who(tg, "moved.test")[:2] == (200, "old")
        r.kill()
        time.sleep(8)                                    # the backoff has reached its ceiling
        assert who(tg, "moved.test")[:2] == (200, "old")  # stale while Redis is away
        r.start()                                        # empty: a restart without persistence
        back = time.monotonic()
        domain(r, "moved.test", "t1", new.addr)
        wait_until(lambda: who(tg, "moved.test")[1] == "new", scale(2.5), "the new route after Redis' return")
        assert time.monotonic() - back < scale(2.5)
