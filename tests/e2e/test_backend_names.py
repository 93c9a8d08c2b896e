"""Backends named by DNS names end to end: every address of a name is a backend.

A name that resolves to an IPv4 and an IPv6 address (localhost: 127.0.0.1 and
::1, RFC 6761; a dual-stack host) is two backends of the set, as nginx makes
each address a peer: a backend listening on only one of them (a Node >= 17 dev
server listens on ::1 only) answers every request, for static routes and Redis
routes alike; the refusing address cools down and is skipped.  Redis routes
read the hosts file again when it changes (TOLLGATE_TEST_HOSTS_FILE points
tollgate's resolver at a file the test may edit; /etc/hosts is never touched).
"""

import os
import signal
import socket
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
