"""Backends named by DNS names end to end: every address of a name is a backend.

A name that resolves to an IPv4 and an IPv6 address (localhost: 127.0.0.1 and
::1, RFC 6761; a dual-stack host) is two backends of the set, as nginx makes
each address a peer: a backend listening on only one of them (a Node >= 17 dev
server listens on ::1 only) answers every request, for static routes and Redis
routes alike; the refusing address cools down and is skipped.  Redis routes
read the hosts file again when it changes (TOLLGATE_TEST_HOSTS_FILE points
tollgate's resolver at a file the test may edit; /etc/hosts is never touched).

Names asked of DNS are asked of a fake DNS server (FakeDNS: a UDP socket that
answers, delays or ignores each A and AAAA query as the test says), to which
TOLLGATE_TEST_RESOLV_CONF points tollgate's resolver: an A answered at once
and an AAAA never answered give the name's IPv4 addresses after the
resolution delay (0.2 s), not after the resolver's timeouts (4 s).
"""

import os
import signal
import socket
import struct
import threading
import time

from tglib import *

TIMEOUT = 90


def _ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def _need_ipv6():
    if not _ipv6_loopback():
        raise Skip("no IPv6 loopback here (cannot bind [::1])")


def _port_free_on_both():
    """A port free on [::1] and on 127.0.0.1 (so that only the backend started on it answers)."""
    for _ in range(50):
        s6 = socket.socket(socket.AF_INET6)
        s6.bind(("::1", 0))
        port = s6.getsockname()[1]
        s4 = socket.socket(socket.AF_INET)
        try:
            s4.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s4.close()
            s6.close()
    raise RuntimeError("no port free on both loopbacks")


def _statuses(tg, host, n=8):
    return [http(tg.port, "GET", "/echo", host)[0] for _ in range(n)]


def _hosts_file(text):
    path = os.path.join(tmpdir(), "hosts")
    _write(path, text)
    return path


def _write(path, text):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def test_static_localhost_backend_on_ipv6_loopback_only():
    _need_ipv6()
    port = _port_free_on_both()
    with Backend("v6", port=port, host="::1"), \
            Tollgate(routes=["app.test=localhost:%d" % port], workers=1) as tg:
        assert _statuses(tg, "app.test") == [200] * 8


def test_static_localhost_backend_on_ipv4_loopback_only():
    port = _port_free_on_both() if _ipv6_loopback() else free_port()
    with Backend("v4", port=port, host="127.0.0.1"), \
            Tollgate(routes=["app.test=localhost:%d" % port], workers=2) as tg:
        assert _statuses(tg, "app.test") == [200] * 8


def test_redis_localhost_backend_on_ipv6_loopback_only():
    _need_ipv6()
    port = _port_free_on_both()
    with Redis() as r, Backend("v6", port=port, host="::1"), Tollgate(redis=r.url, workers=1) as tg:
        r.cmd("HSET", "tg:domain:app.test", "tenant", "t1", "backends", "localhost:%d" % port)
        assert _statuses(tg, "app.test") == [200] * 8


def test_redis_dual_stack_name_from_hosts_file():
    """A name with an IPv4 and an IPv6 address in the hosts file; the backend is on ::1 only."""
    _need_ipv6()
    port = _port_free_on_both()
    hosts = _hosts_file("127.0.0.1 dual.internal\n::1 dual.internal\n")
    with Redis() as r, Backend("v6", port=port, host="::1"), \
            Tollgate(redis=r.url, workers=1, env={"TOLLGATE_TEST_HOSTS_FILE": hosts}) as tg:
        r.cmd("HSET", "tg:domain:app.test", "tenant", "t1", "backends", "dual.internal:%d" % port)
        assert _statuses(tg, "app.test") == [200] * 8


def test_redis_hosts_file_edit_is_seen():
    """An edited hosts entry reaches a Redis route after route-cache-ttl, and at once after SIGHUP."""
    with Redis() as r, Backend("a", host="127.0.0.1") as a:
        hosts = _hosts_file("127.0.0.3 app.internal\n")      # nothing listens there: 502
        with Tollgate(redis=r.url, workers=2, args=["--route-cache-ttl", "1"],
                      env={"TOLLGATE_TEST_HOSTS_FILE": hosts}) as tg:
            r.cmd("HSET", "tg:domain:app.test", "tenant", "t1", "backends", "app.internal:%d" % a.port)
            assert http(tg.port, "GET", "/echo", "app.test")[0] == 502
            _write(hosts, "# edited\n127.0.0.1 app.internal\n")
            wait_until(lambda: _statuses(tg, "app.test", 4) == [200] * 4, timeout=scale(8),
                       what="the edited hosts entry in use")

        # A long TTL: only a reload re-reads it.
        _write(hosts, "127.0.0.3 app.internal\n")
        with Tollgate(redis=r.url, workers=2, args=["--route-cache-ttl", "3600"],
                      env={"TOLLGATE_TEST_HOSTS_FILE": hosts}) as tg:
            assert http(tg.port, "GET", "/echo", "app.test")[0] == 502
            _write(hosts, "127.0.0.1 app.internal\n")
            time.sleep(1.2)
            tg.signal(signal.SIGHUP)
            wait_until(lambda: _statuses(tg, "app.test", 4) == [200] * 4, timeout=scale(5),
                       what="the hosts entry in use after SIGHUP")


# ---------------------------------------------------------------- a fake DNS server

A, AAAA = 1, 28


class FakeDNS:
    """A DNS server on 127.0.0.1 (UDP).  rules[(name, qtype)] is one of
    ("answer", [addresses], ttl, delay), ("nodata", delay), ("nxdomain", delay)
    or ("ignore",); a query for anything else gets NXDOMAIN at once.
    queries lists (monotonic time, name, qtype) as they come."""

    def __init__(self, rules):
        self.rules = rules
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.resolv_conf = os.path.join(tmpdir(), "resolv.conf")
        with open(self.resolv_conf, "w") as f:
            f.write("nameserver 127.0.0.1:%d\n" % self.port)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def env(self, **more):
        e = {"TOLLGATE_TEST_RESOLV_CONF": self.resolv_conf}
        e.update(more)
        return e

    def close(self):
        self.stopping = True
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _serve(self):
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(2048)
            except OSError:
                return
            try:
                self._query(data, peer)
            except Exception:
                pass

    def _query(self, data, peer):
        qid, flags, qd = struct.unpack("!HHH", data[:6])
        i, labels = 12, []
        while data[i]:
            labels.append(data[i + 1:i + 1 + data[i]].decode().lower())
            i += 1 + data[i]
        qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
        question = data[12:i + 5]
        name = ".".join(labels)
        self.queries.append((time.monotonic(), name, qtype))
        rule = self.rules.get((name, qtype), ("nxdomain", 0))
        if rule[0] == "ignore":
            return
        rcode, answers = 0, b""
        if rule[0] == "answer":
            _, addrs, ttl, delay = rule
            for a in addrs:
                rdata = socket.inet_pton(socket.AF_INET if qtype == A else socket.AF_INET6, a)
                answers += struct.pack("!HHHIH", 0xC00C, qtype, 1, ttl, len(rdata)) + rdata
            n = len(addrs)
        else:
            delay, n = rule[1], 0
            rcode = 3 if rule[0] == "nxdomain" else 0
        reply = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, n, 0, 0) + question + answers

        def send():
            try:
                self.sock.sendto(reply, peer)
            except OSError:
                pass
        if delay:
            threading.Timer(delay, send).start()
        else:
            send()


def _timed(port, host):
    t = time.monotonic()
    st = http(port, "GET", "/echo", host)[0]
    return st, time.monotonic() - t


def test_redis_name_whose_aaaa_is_never_answered_resolves_after_the_delay():
    """A answered at once, AAAA never: the IPv4 addresses serve after the
    resolution delay, not after the resolver's timeouts (2 s x 2 attempts)."""
    with Redis() as r, Backend("a", host="127.0.0.1") as a, \
            FakeDNS({("slow6.internal", A): ("answer", ["127.0.0.1"], 30, 0),
                     ("slow6.internal", AAAA): ("ignore",)}) as dns, \
            Tollgate(redis=r.url, workers=1, env=dns.env()) as tg:
        r.cmd("HSET", "tg:domain:app.test", "tenant", "t1", "backends", "slow6.internal:%d" % a.port)
        st, took = _timed(tg.port, "app.test")
        assert st == 200, st
        assert took < scale(1.5), "first request took %.2f s" % took
        assert _statuses(tg, "app.test", 4) == [200] * 4


def test_redis_aaaa_answered_within_the_delay_is_used():
    """AAAA answered 50 ms after A: both families are kept (the backend is on ::1 only)."""
    _need_ipv6()
    port = _port_free_on_both()
    with Redis() as r, Backend("v6", port=port, host="::1"), \
            FakeDNS({("dual.internal", A): ("answer", ["127.0.0.1"], 30, 0),
                     ("dual.internal", AAAA): ("answer", ["::1"], 30, 0.05)}) as dns, \
            Tollgate(redis=r.url, workers=1, env=dns.env()) as tg:
        r.cmd("HSET", "tg:domain:app.test", "tenant", "t1", "backends", "dual.internal:%d" % port)
        assert _statuses(tg, "app.test") == [200] * 8


def test_redis_ipv6_only_name_waits_for_its_aaaa():
    """No A record (an IPv6-only host): the AAAA answer is waited for past the delay."""
    _need_ipv6()
    port = _port_free_on_both()
    with Redis() as r, Backend("v6", port=port, host="::1"), \
            FakeDNS({("v6only.internal", A): ("nodata", 0),
                     ("v6only.internal", AAAA): ("answer", ["::1"], 30, 0.6)}) as dns, \
            Tollgate(redis=r.url, workers=1, env=dns.env()) as tg:
        r.cmd("HSET", "tg:domain:app.test", "tenant", "t1", "backends", "v6only.internal:%d" % port)
        st, took = _timed(tg.port, "app.test")
        assert st == 200, st
        assert took >= 0.55, "answered after %.2f s, before the AAAA" % took
        assert _statuses(tg, "app.test", 4) == [200] * 4


def test_redis_name_with_neither_family_fails():
    """A and AAAA both NXDOMAIN: the route fails as a name that does not resolve."""
    with Redis() as r, Backend("a", host="127.0.0.1") as a, \
            FakeDNS({}) as dns, Tollgate(redis=r.url, workers=1, env=dns.env()) as tg:
        r.cmd("HSET", "tg:domain:app.test", "tenant", "t1", "backends", "nosuch.internal:%d" % a.port)
        st = http(tg.port, "GET", "/echo", "app.test")[0]
        assert st != 200, st


def _resolved_names_survive(during):
    """Backends fast.internal (hosts file) and slow.internal (A after 1.5 s):
    during(tg, hosts) runs while slow.internal is being asked; the route
    still gets both names' addresses (fast.internal's answer, taken before,
    is not thrown away at the end of the fetch)."""
    with Redis() as r, Backend("a", host="127.0.0.1") as a, \
            FakeDNS({("slow.internal", A): ("answer", ["127.0.0.1"], 30, 1.5),
                     ("slow.internal", AAAA): ("nodata", 0)}) as dns:
        hosts = _hosts_file("127.0.0.1 fast.internal\n")
        with Tollgate(redis=r.url, workers=1, env=dns.env(TOLLGATE_TEST_HOSTS_FILE=hosts)) as tg:
            r.cmd("HSET", "tg:domain:app.test", "tenant", "t1", "backends",
                  "fast.internal:%d,slow.internal:%d" % (a.port, a.port))
            t = threading.Timer(0.5, during, (tg, hosts))
            t.start()
            st = http(tg.port, "GET", "/echo", "app.test")[0]
            t.join()
            assert st == 200, (st, tg.log_text()[-1500:])
            assert _statuses(tg, "app.test", 4) == [200] * 4


def test_redis_reload_during_a_resolution_keeps_the_names_resolved_before():
    _resolved_names_survive(lambda tg, hosts: tg.signal(signal.SIGHUP))


def test_redis_hosts_file_edit_during_a_resolution_keeps_the_names_resolved_before():
    _resolved_names_survive(lambda tg, hosts: _write(hosts, "# edited\n127.0.0.1 fast.internal\n"))


def _asked(dns, name):
    return sorted(q for _, n, q in dns.queries if n == name)


def test_redis_name_is_asked_of_dns_once():
    """A name not in the hosts file is asked once: one A and one AAAA query
    (evdns_getaddrinfo's hosts-file step used to send both before it was
    cancelled, then the name was asked again)."""
    with Redis() as r, Backend("a", host="127.0.0.1") as a, \
            FakeDNS({("once.internal", A): ("answer", ["127.0.0.1"], 30, 0),
                     ("once.internal", AAAA): ("nodata", 0)}) as dns, \
            Tollgate(redis=r.url, workers=1, env=dns.env()) as tg:
        r.cmd("HSET", "tg:domain:app.test", "tenant", "t1", "backends", "once.internal:%d" % a.port)
        assert _statuses(tg, "app.test", 4) == [200] * 4
        time.sleep(0.3)                      # a query sent late would be seen by now
        assert _asked(dns, "once.internal") == [A, AAAA], "%d queries: %s" % (len(dns.queries), dns.queries[:6])


def test_redis_routes_sharing_a_name_ask_it_once():
    """40 domains naming one backend host, first requested all at once while
    its A answer takes 0.5 s: one A and one AAAA query in all, and every
    request answered from it."""
    n = 40
    with Redis() as r, Backend("a", host="127.0.0.1") as a, \
            FakeDNS({("shared.internal", A): ("answer", ["127.0.0.1"], 30, 0.5),
                     ("shared.internal", AAAA): ("nodata", 0)}) as dns, \
            Tollgate(redis=r.url, workers=1, env=dns.env()) as tg:
        for i in range(n):
            r.cmd("HSET", "tg:domain:app%d.test" % i, "tenant", "t1", "backends",
                  "shared.internal:%d" % a.port)
        results = [None] * n

        def one(i):
            results[i] = http(tg.port, "GET", "/echo", "app%d.test" % i)[0]
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * n, results
        assert _asked(dns, "shared.internal") == [A, AAAA], "%d queries: %s" % (len(dns.queries), dns.queries[:6])


def test_redis_names_with_a_trailing_dot():
    """An absolute name ("localhost.", "name.") is the name: localhost. is the
    loopbacks without asking DNS, and name. finds the hosts entry "name"
    (and the entry "other." finds "other"); no DNS query for either."""
    hosts = _hosts_file("127.0.0.1 app.internal\n127.0.0.1 other.internal.\n")
    with Redis() as r, Backend("a", host="127.0.0.1") as a, FakeDNS({}) as dns, \
            Tollgate(redis=r.url, workers=1, env=dns.env(TOLLGATE_TEST_HOSTS_FILE=hosts)) as tg:
        r.cmd("HSET", "tg:domain:lo.test", "tenant", "t1", "backends", "localhost.:%d" % a.port)
        r.cmd("HSET", "tg:domain:abs.test", "tenant", "t1", "backends", "App.Internal.:%d" % a.port)
        r.cmd("HSET", "tg:domain:other.test", "tenant", "t1", "backends", "other.internal:%d" % a.port)
        assert _statuses(tg, "lo.test", 4) == [200] * 4
        assert _statuses(tg, "abs.test", 4) == [200] * 4
        assert _statuses(tg, "other.test", 4) == [200] * 4
        assert dns.queries == [], dns.queries


def test_redis_hosts_edit_during_a_dns_query_is_not_hidden_by_its_late_answer():
    """slow.internal is being asked of DNS (answer 127.0.0.3, TTL 300, after
    1.5 s) when the hosts file gains "127.0.0.1 slow.internal": a route
    first asked for after the edit is read uses the hosts entry (it does not
    wait for the query sent before), and the late DNS answer counts as old:
    the route that waited for it is asked again at its next request, not
    kept for the answer's 300 s."""
    with Redis() as r, Backend("a", host="127.0.0.1") as a, \
            FakeDNS({("slow.internal", A): ("answer", ["127.0.0.3"], 300, 1.5),
                     ("slow.internal", AAAA): ("nodata", 0)}) as dns:
        hosts = _hosts_file("127.0.0.1 other.internal\n")
        with Tollgate(redis=r.url, workers=1, args=["--route-cache-ttl", "1"],
                      env=dns.env(TOLLGATE_TEST_HOSTS_FILE=hosts)) as tg:
            r.cmd("HSET", "tg:domain:app.test", "tenant", "t1", "backends", "slow.internal:%d" % a.port)
            r.cmd("HSET", "tg:domain:other.test", "tenant", "t1", "backends", "other.internal:%d" % a.port)
            r.cmd("HSET", "tg:domain:app2.test", "tenant", "t1", "backends", "slow.internal:%d" % a.port)
            t0 = time.monotonic()
            first = threading.Thread(target=http, args=(tg.port, "GET", "/echo", "app.test"))
            first.start()
            time.sleep(0.3)
            _write(hosts, "127.0.0.1 other.internal\n127.0.0.1 slow.internal\n")
            time.sleep(max(0, 1.15 - (time.monotonic() - t0)))      # the file is looked at once a second
            assert http(tg.port, "GET", "/echo", "other.test")[0] == 200
            assert http(tg.port, "GET", "/echo", "app2.test")[0] == 200
            first.join()
            wait_until(lambda: _statuses(tg, "app.test", 3) == [200] * 3, timeout=scale(5),
                       what="app.test on the hosts entry")
