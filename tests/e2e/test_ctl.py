"""tollgate-ctl end to end, against a real redis-server (issue 3; docs/redis-schema.md).

Each test starts its own redis-server on a free port (tglib.Redis), runs the
built tollgate-ctl and checks what landed in Redis with plain RESP commands,
so the schema is verified independently of the C code that writes it: key
names, field values, atomic replacement, SCAN instead of KEYS (KEYS is
renamed away in the server), validation before any write (exit 2, nothing
written), Redis unreachable or stalled (exit 1, clear message), AUTH, the
database number, unix sockets, --key-prefix, the events hint, --json and
--help.  One test runs the proxy too and checks that `domain show` names the
backend that really answers.

TG_CTL_WRAPPER (e.g. "valgrind -q --error-exitcode=99 --leak-check=full")
runs every tollgate-ctl under that command; TG_WRAPPER applies to tollgate.
"""

import json
import os
import shlex
import socket
import subprocess
import time

import tglib
from tglib import *

TIMEOUT = 120
CTL_WRAPPER = shlex.split(os.environ.get("TG_CTL_WRAPPER", ""))


def ctl_argv(redis_url, *args, prefix=None, json_out=False, extra=()):
    """The command line that runs tollgate-ctl (under TG_CTL_WRAPPER, if set)."""
    argv = CTL_WRAPPER + [TOLLGATE_CTL]
    if redis_url:
        argv += ["--redis", redis_url]
    if prefix is not None:
        argv += ["--key-prefix", prefix]
    if json_out:
        argv += ["--json"]
    argv += list(extra) + list(args)
    if not os.access(TOLLGATE_CTL, os.X_OK):
        raise RuntimeError("no tollgate-ctl at %s (set TG_BUILDDIR)" % TOLLGATE_CTL)
    return argv


def ctl_raw(redis_url, *args, timeout=20, **kw):
    """Runs tollgate-ctl; returns (exit code, stdout bytes, stderr)."""
    p = subprocess.run(ctl_argv(redis_url, *args, **kw), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def ctl(redis_url, *args, **kw):
    """Runs tollgate-ctl; returns (exit code, stdout, stderr)."""
    rc, out, err = ctl_raw(redis_url, *args, **kw)
    return rc, out.decode(), err


def ok(redis_url, *args, **kw):
    rc, out, err = ctl(redis_url, *args, **kw)
    assert rc == 0, "tollgate-ctl %s: exit %d\n%s%s" % (" ".join(args), rc, out, err)
    return out


def ok_json(redis_url, *args, **kw):
    return json.loads(ok(redis_url, *args, json_out=True, **kw))


def hgetall(r, key):
    flat = r.cmd("HGETALL", key)
    return dict(zip(flat[0::2], flat[1::2]))


def month():
    return time.strftime("%Y%m", time.gmtime())


def today():
    return time.strftime("%Y%m%d", time.gmtime())


# ---------------------------------------------------------------- domains

def test_ctl_domain_add_writes_the_contract_fields():
    with Redis() as r:
        out = ok(r.url, "domain", "add", "Shop.Example.COM.", "--tenant", "acme",
                 "--backend", "10.0.0.1:8080", "--backend", "10.0.0.2:8080, [::1]:9000",
                 "--lb", "least_conn", "--redirect-https")
        assert "shop.example.com" in out
        h = hgetall(r, "tg:domain:shop.example.com")
        assert h == {"tenant": "acme", "backends": "10.0.0.1:8080,10.0.0.2:8080,[::1]:9000",
                     "lb": "least_conn", "redirect_https": "1"}, h
        assert r.cmd("TYPE", "tg:domain:shop.example.com") == "hash"

        # Re-adding replaces the whole hash atomically: stale fields go.
        r.cmd("HSET", "tg:domain:shop.example.com", "stale", "x")
        d = ok_json(r.url, "domain", "add", "shop.example.com", "--tenant", "beta", "--backend", "b.internal:80")
        assert d["created"] is False and d["backends"] == "b.internal:80"
        h = hgetall(r, "tg:domain:shop.example.com")
        assert h == {"tenant": "beta", "backends": "b.internal:80", "lb": "round_robin",
                     "redirect_https": "0"}, h

        # Wildcard domains use the *.zone key.
        ok(r.url, "domain", "add", "*.Preview.example.com", "--tenant", "acme", "--backend", "10.0.0.9:80")
        assert hgetall(r, "tg:domain:*.preview.example.com")["tenant"] == "acme"

        # An IPv6 literal is keyed in RFC 5952's form, the one browsers send
        # in Host ([2001:DB8:0:0::1] was keyed as typed: never matched)
        ok(r.url, "domain", "add", "[2001:DB8:0:0::1]", "--tenant", "acme", "--backend", "10.0.0.9:80")
        assert hgetall(r, "tg:domain:[2001:db8::1]")["tenant"] == "acme"
        assert ok_json(r.url, "domain", "show", "[2001:db8:0::1]")["tenant"] == "acme"


def test_ctl_domain_rm_and_not_found():
    with Redis() as r:
        ok(r.url, "domain", "add", "a.example", "--tenant", "t", "--backend", "10.0.0.1:80")
        ok(r.url, "path", "add", "a.example", "/api", "10.0.0.2:80")
        d = ok_json(r.url, "domain", "rm", "a.example")
        assert d == {"host": "a.example", "removed": True, "paths_removed": True}, d
        assert r.cmd("EXISTS", "tg:domain:a.example", "tg:paths:a.example") == 0
        rc, out, err = ctl(r.url, "domain", "rm", "a.example")
        assert rc == 3 and "no such domain" in err, (rc, err)


def test_ctl_rejects_bad_input_before_writing():
    with Redis() as r:
        cases = [
            (["domain", "add", "x.example", "--tenant", "t", "--backend", "10.0.0.1"], "bad backend address"),
            (["domain", "add", "x.example", "--tenant", "t", "--backend", "10.0.0.1:99999"], "bad backend"),
            (["domain", "add", "x.example", "--tenant", "t", "--backend", "a:1,,b:2"], "empty item"),
            (["domain", "add", "x.example", "--tenant", "t"], "--backend"),
            (["domain", "add", "x.example", "--backend", "a:1"], "--tenant"),
            (["domain", "add", "x.example", "--tenant", "has space", "--backend", "a:1"], "tenant"),
            (["domain", "add", "x.example", "--tenant", "t", "--backend", "a:1", "--lb", "random"], "--lb"),
            (["domain", "add", "bad..host", "--tenant", "t", "--backend", "a:1"], "invalid host"),
            (["domain", "add", "x.example:8080", "--tenant", "t", "--backend", "a:1"], "port"),
            (["domain", "add", "x.example", "--tenant", "t", "--backend", "a:1", "--bogus"], "unknown option"),
            (["tenant", "set", "t", "--cap", "lots"], "--cap"),
            (["tenant", "set", "t", "--action", "explode"], "--action"),
            (["tenant", "set", "t", "--action", "throttle"], "--throttle-bps"),
            (["tenant", "set", "t"], "needs"),
            (["usage", "t", "--month", "202413"], "YYYYMM"),
            (["pattern", "add", "^(unclosed$", "t", "a:1"], "compile"),
            (["pattern", "add", "^([a-z]+)\\.x$", "t", "$2.internal:80"], "capture group"),
            (["pattern", "add", "^(?<n>[a-z]+)\\.x$", "t", "${m}.internal:80"], "named group"),
            (["path", "add", "x.example", "api", "a:1"], "start with '/'"),
            (["path", "add", "x.example", "/api", "nope"], "bad backend"),
            (["path", "add", "x.example", "~^/v[0-9+", "a:1"], "compile"),
            (["domain", "show"], "wrong number"),
            (["frobnicate"], "unknown command"),
        ]
        for args, needle in cases:
            rc, out, err = ctl(r.url, *args)
            assert rc == 2, "%s: exit %d (want 2)\n%s%s" % (args, rc, out, err)
            assert needle in err, "%s: %r not in stderr %r" % (args, needle, err)
        assert r.cmd("DBSIZE") == 0, r.cmd("SCAN", "0")


def test_ctl_domain_list_uses_scan_not_keys():
    # KEYS is renamed away: a KEYS call would fail the command.
    with Redis(args=["--rename-command", "KEYS", ""]) as r:
        cmds = []
        for i in range(1500):
            cmds.append(("HSET", "tg:domain:h%04d.example" % i, "tenant", "t%d" % (i % 3),
                         "backends", "10.0.0.%d:80" % (i % 200 + 1)))
        cmds.append(("HSET", "tg:tenant:t1", "cap_bytes", "5"))     # not a domain
        cmds.append(("SET", "other:domain:zzz", "x"))               # another prefix
        for i in range(0, len(cmds), 500):
            r.pipeline(*cmds[i:i + 500])
        rows = ok_json(r.url, "domain", "list")
        hosts = [row["host"] for row in rows]
        assert len(hosts) == 1500 and hosts == sorted(hosts), len(hosts)
        assert len(set(hosts)) == 1500
        t1 = ok_json(r.url, "domain", "list", "--tenant", "t1")
        assert len(t1) == 500 and all(row["tenant"] == "t1" for row in t1)
        text = ok(r.url, "domain", "list", "--tenant", "t2")
        assert len(text.strip().splitlines()) == 500
        assert text.splitlines()[0].split("\t")[0] == "h0002.example"


# ---------------------------------------------------------------- matching

def test_ctl_domain_show_follows_the_matching_order():
    with Redis() as r:
        u = r.url
        ok(u, "domain", "add", "*.example.com", "--tenant", "wild", "--backend", "10.0.0.2:80")
        ok(u, "domain", "add", "www.example.com", "--tenant", "exact", "--backend", "10.0.0.1:80")
        ok(u, "pattern", "add", "^pr-(\\d+)\\.preview\\.example\\.com$", "prev", "pr-$1.internal:8080")
        ok(u, "pattern", "add", "^(?<app>[a-z]+)\\.apps\\.example\\.com$", "apps", "${app}.svc:80")
        ok(u, "path", "add", "*.example.com", "/api", "10.0.1.1:80,10.0.1.2:80")
        ok(u, "path", "add", "*.example.com", "~^/v[0-9]+/", "10.0.2.1:80")

        d = ok_json(u, "domain", "show", "WWW.example.com.")
        assert d["match"] == "exact" and d["tenant"] == "exact" and d["backends"] == "10.0.0.1:80", d
        assert d["paths"] == []                  # path rules belong to the key that matched

        d = ok_json(u, "domain", "show", "shop.example.com", "--path", "/api/orders")
        assert d["match"] == "wildcard" and d["domain"] == "*.example.com", d
        assert d["path_rule"] == 0 and d["path_backends"] == "10.0.1.1:80,10.0.1.2:80", d
        d = ok_json(u, "domain", "show", "shop.example.com", "--path", "/v2/x?q=1")
        assert d["path_rule"] == 1 and d["path_backends"] == "10.0.2.1:80", d
        d = ok_json(u, "domain", "show", "shop.example.com", "--path", "/other")
        assert d["path_rule"] is None and d["path_backends"] == "10.0.0.2:80", d

        # A wildcard covers exactly one extra label: the patterns decide below that.
        d = ok_json(u, "domain", "show", "pr-42.preview.example.com")
        assert d["match"] == "pattern" and d["pattern_index"] == 0, d
        assert d["tenant"] == "prev" and d["backends"] == "pr-42.internal:8080", d
        d = ok_json(u, "domain", "show", "blog.apps.example.com")
        assert d["match"] == "pattern" and d["backends"] == "blog.svc:80", d

        rc, out, _ = ctl(u, "domain", "show", "a.b.c.example.org", json_out=True)
        assert rc == 3 and json.loads(out)["match"] is None
        rc, out, _ = ctl(u, "domain", "show", "example.com")    # the zone itself is not covered
        assert rc == 3, out

        rows = ok_json(u, "pattern", "list")
        assert [p["tenant"] for p in rows] == ["prev", "apps"]
        ok(u, "pattern", "rm", "^pr-(\\d+)\\.preview\\.example\\.com$")
        assert r.cmd("LLEN", "tg:patterns") == 1
        rc, _, _ = ctl(u, "pattern", "rm", "^nope$")
        assert rc == 3
        ok(u, "pattern", "add", "^first\\.example\\.net$", "t", "a:1", "--first")
        assert r.cmd("LINDEX", "tg:patterns", 0) == "^first\\.example\\.net$ t a:1"

        rows = ok_json(u, "path", "list", "*.example.com")["rules"]
        assert [(p["type"], p["match"]) for p in rows] == [("prefix", "/api"), ("regex", "^/v[0-9]+/")]
        ok(u, "path", "rm", "*.example.com", "~^/v[0-9]+/")
        assert r.cmd("LRANGE", "tg:paths:*.example.com", 0, -1) == ["/api 10.0.1.1:80,10.0.1.2:80"]


def test_ctl_domain_show_reports_bad_data():
    with Redis() as r:
        r.cmd("RPUSH", "tg:domain:list.example", "oops")
        r.cmd("HSET", "tg:domain:nobackends.example", "tenant", "t")
        r.cmd("HSET", "tg:domain:badaddr.example", "tenant", "t", "backends", "10.0.0.1")
        for host, needle in [("list.example", "not a hash"), ("nobackends.example", "backends"),
                             ("badaddr.example", "bad backend address")]:
            rc, out, err = ctl(r.url, "domain", "show", host, json_out=True)
            assert rc == 4, (host, rc, out, err)
            assert needle in json.loads(out)["error"], out
        rc, out, err = ctl(r.url, "domain", "show", "list.example")
        assert rc == 4 and "502" in out


# ---------------------------------------------------------------- tenants and usage

def test_ctl_tenant_policy_and_usage():
    with Redis() as r:
        u = r.url
        ok(u, "tenant", "set", "acme", "--cap", "10GiB", "--action", "block")
        assert hgetall(r, "tg:tenant:acme") == {"cap_bytes": str(10 << 30), "cap_action": "block"}
        ok(u, "tenant", "set", "acme", "--action", "throttle", "--throttle-bps", "1000000")
        h = hgetall(r, "tg:tenant:acme")
        assert h["cap_action"] == "throttle" and h["throttle_bps"] == "1000000" and h["cap_bytes"] == str(10 << 30)
        ok(u, "tenant", "suspend", "acme")
        assert r.cmd("HGET", "tg:tenant:acme", "suspended") == "1"
        d = ok_json(u, "tenant", "show", "acme")
        assert d["policy"] == {"cap_bytes": 10 << 30, "cap_action": "throttle", "throttle_bps": 1000000,
                               "suspended": True}, d
        ok(u, "tenant", "resume", "acme")
        assert r.cmd("HGET", "tg:tenant:acme", "suspended") == "0"
        ok(u, "tenant", "set", "acme", "--cap", "none")
        assert r.cmd("HEXISTS", "tg:tenant:acme", "cap_bytes") == 0
        assert ok_json(u, "tenant", "show", "nobody")["exists"] is False

        r.cmd("HSET", "tg:meter:acme:" + month(), "bytes_in", "1000", "bytes_out", "250000", "requests", "42")
        r.cmd("HSET", "tg:meter:acme:" + today(), "bytes_in", "10", "bytes_out", "20", "requests", "3")
        r.cmd("HSET", "tg:meter:acme:202401", "bytes_in", "7", "bytes_out", "8", "requests", "1")
        d = ok_json(u, "usage", "acme")
        assert d["month"] == {"period": month(), "bytes_in": 1000, "bytes_out": 250000, "requests": 42}, d
        assert d["today"] == {"period": today(), "bytes_in": 10, "bytes_out": 20, "requests": 3}, d
        d = ok_json(u, "usage", "acme", "--month", "202401")
        assert d["month"]["bytes_out"] == 8 and "today" not in d, d
        text = ok(u, "usage", "acme")
        assert "bytes_in 1000" in text and "requests 42" in text


# ---------------------------------------------------------------- connection

def test_ctl_redis_unreachable_or_stalled():
    port = free_port()
    rc, out, err = ctl("redis://127.0.0.1:%d" % port, "domain", "list")
    assert rc == 1 and "cannot connect" in err and str(port) in err, (rc, err)
    rc, out, err = ctl("redis://127.0.0.1:%d" % port, "domain", "add", "a.b", "--tenant", "t",
                       "--backend", "bad")
    assert rc == 2, "input is validated before connecting"
    rc, out, err = ctl("http://127.0.0.1:1", "domain", "list")
    assert rc == 2 and "URL" in err
    with Redis() as r:
        r.pause()
        try:
            t0 = time.monotonic()
            rc, out, err = ctl(r.url, "domain", "show", "x.example", extra=["--timeout", "0.5"])
            took = time.monotonic() - t0
        finally:
            r.resume()
        assert rc == 1 and "timeout" in err, (rc, err)
        assert took < 3, took
    # under 1 ms is a zero timeval, hiredis's "no timeout": it hung on a
    # Redis that never answers; refused like other bad numbers
    for bad in ("0.0000001", "1e-7", "0x10", "inf", "nan", " 5", "0"):
        rc, out, err = ctl("redis://127.0.0.1:1", "domain", "list", extra=["--timeout", bad])
        assert rc == 2 and "--timeout" in err, (bad, rc, err)


def test_ctl_auth_database_and_unix_socket():
    sockdir = tglib.tmpdir()
    sock = os.path.join(sockdir, "redis.sock")
    with Redis(args=["--unixsocket", sock, "--unixsocketperm", "700"]) as r:
        # Database number from the URL.
        ok(r.url + "/5", "domain", "add", "db.example", "--tenant", "t", "--backend", "10.0.0.1:80")
        assert r.cmd("EXISTS", "tg:domain:db.example") == 0
        rep = r.pipeline(("SELECT", "5"), ("HGET", "tg:domain:db.example", "tenant"))
        assert rep[1] == "t", rep
        # Unix socket, with ?db=.
        ok("unix://%s?db=5" % sock, "domain", "rm", "db.example")
        assert r.pipeline(("SELECT", "5"), ("EXISTS", "tg:domain:db.example"))[1] == 0
        # AUTH: a password set at run time.
        r.cmd("CONFIG", "SET", "requirepass", "s3cret")
        rc, out, err = ctl(r.url, "domain", "list")
        assert rc == 1 and ("NOAUTH" in err or "handshake" in err or "auth" in err.lower()), (rc, err)
        rc, out, err = ctl("redis://:wrong@127.0.0.1:%d" % r.port, "domain", "list")
        assert rc == 1 and "handshake" in err, (rc, err)
        ok("redis://:s3cret@127.0.0.1:%d" % r.port, "domain", "add", "auth.example", "--tenant", "t",
           "--backend", "10.0.0.1:80")
        rep = r.pipeline(("AUTH", "s3cret"), ("HGET", "tg:domain:auth.example", "tenant"),
                         ("CONFIG", "SET", "requirepass", ""))
        assert rep[1] == "t", rep


def test_ctl_key_prefix_and_events_hint():
    with Redis() as r:
        sub = socket.create_connection(("127.0.0.1", r.port), timeout=5)
        try:
            sub.sendall(tglib._resp_encode(("SUBSCRIBE", "acme/events", "tg:events")))
            reader = tglib._RespReader(sub)
            assert reader.read()[0] == "subscribe"
            assert reader.read()[0] == "subscribe"
            ok(r.url, "domain", "add", "p.example", "--tenant", "t", "--backend", "10.0.0.1:80", prefix="acme/")
            assert hgetall(r, "acme/domain:p.example")["tenant"] == "t"
            assert r.cmd("EXISTS", "tg:domain:p.example") == 0
            assert reader.read() == ["message", "acme/events", "domain p.example"]
            ok(r.url, "tenant", "suspend", "t")
            assert reader.read() == ["message", "tg:events", "tenant t"]
            ok(r.url, "pattern", "add", "^x\\.example$", "t", "a:1")
            assert reader.read() == ["message", "tg:events", "patterns"]
            ok(r.url, "path", "add", "*.zone.example", "/a", "a:1")
            assert reader.read() == ["message", "tg:events", "domain *.zone.example"]
        finally:
            sub.close()
        # The prefix is matched literally by SCAN (glob characters escaped).
        r.cmd("HSET", "a*b:domain:one.example", "tenant", "t", "backends", "a:1")
        r.cmd("HSET", "axxb:domain:two.example", "tenant", "t", "backends", "a:1")
        rows = ok_json(r.url, "domain", "list", prefix="a*b:")
        assert [row["host"] for row in rows] == ["one.example"], rows
        rc, _, err = ctl(r.url, "domain", "list", prefix="bad prefix")
        assert rc == 2


def test_ctl_takes_the_prefixes_and_urls_the_proxy_takes():
    """tollgate-ctl refuses a --key-prefix or --redis URL that tollgate refuses
    (an empty or non-ASCII prefix; a URL without its port or with a user name),
    so that it never writes keys no proxy reads; nothing is written."""
    with Redis() as r:
        add = ("domain", "add", "a.example", "--tenant", "t", "--backend", "10.0.0.1:80")
        for prefix in ("", "a\u00e9:"):
            rc, _, err = ctl(r.url, *add, prefix=prefix)
            assert rc == 2 and "--key-prefix must be 1 to 64 printable ASCII" in err, (prefix, rc, err)
        for url, needle in (("redis://127.0.0.1", "missing :port"),
                            ("redis://user:pw@127.0.0.1:%d" % r.port, "user names are not supported")):
            rc, _, err = ctl(url, *add)
            assert rc == 2 and "bad Redis URL" in err and needle in err, (url, rc, err)
        assert r.cmd("DBSIZE") == 0, r.cmd("SCAN", "0")
        # the proxy refuses the same values
        for flag, value in (("--key-prefix", ""), ("--key-prefix", "a\u00e9:"), ("--redis", "redis://127.0.0.1"),
                            ("--redis", "redis://user:pw@127.0.0.1:6379")):
            p = subprocess.run([TOLLGATE, "-t", flag, value], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert p.returncode == 1, (flag, value, p.stderr)


def test_ctl_pattern_template_that_can_never_route_is_refused():
    """A template that is not a backends list whatever its captures hold (no
    capture at all, or an empty item) is refused with exit 2 and not written:
    the proxy would answer 502 for every host the regex matches.  One that
    needs its captures to hold a port is written, with a warning."""
    with Redis() as r:
        for tmpl in ("127.0.0.1:80,", "no-port", "$1,"):
            rc, _, err = ctl(r.url, "pattern", "add", "^(a)\\.pt$", "t", tmpl)
            assert rc == 2 and "never gives a valid backends list" in err, (tmpl, rc, err)
        assert r.cmd("DBSIZE") == 0, r.cmd("SCAN", "0")
        rc, _, err = ctl(r.url, "pattern", "add", "^(.+)\\.pt$", "t", "$1")
        assert rc == 0 and "warning: the template gives a valid backends list only if the captures hold ports" \
            in err, (rc, err)
        assert r.cmd("LRANGE", "tg:patterns", 0, -1) == ["^(.+)\\.pt$ t $1"]


def test_ctl_escapes_control_bytes_in_messages():
    """An argument with terminal escape sequences is quoted as \\xNN in the
    error message, as tollgate's own messages do."""
    rc, _, err = ctl("redis://127.0.0.1:%d" % free_port(), "domain", "show", "a\x1b[2Jb.example")
    assert rc == 2, (rc, err)
    assert "\x1b" not in err and "\\x1b[2J" in err, repr(err)


def test_ctl_help_for_every_command():
    cmds = [["domain", "add"], ["domain", "rm"], ["domain", "show"], ["domain", "list"], ["tenant", "set"],
            ["tenant", "suspend"], ["tenant", "resume"], ["tenant", "show"], ["usage"], ["pattern", "add"],
            ["pattern", "rm"], ["pattern", "list"], ["path", "add"], ["path", "rm"], ["path", "list"]]
    # No Redis needed for help: point at a closed port to prove it is not contacted.
    url = "redis://127.0.0.1:%d" % free_port()
    for c in cmds:
        rc, out, err = ctl(url, *(c + ["--help"]))
        assert rc == 0 and out.startswith("usage: tollgate-ctl " + " ".join(c)), (c, rc, out, err)
    rc, out, _ = ctl(None, "--help")
    assert rc == 0 and "domain add" in out and "exit status" in out
    rc, out, _ = ctl(None, "domain", "--help")
    assert rc == 0 and "domain list" in out
    rc, _, err = ctl(None, "domain", "frob")
    assert rc == 2 and "unknown domain command" in err
    rc, _, _ = ctl(None)
    assert rc == 2


# ---------------------------------------------------------------- with the proxy

def test_ctl_show_agrees_with_the_proxy():
    """What `domain show --path` names is the backend that answers through tollgate."""
    with Redis() as r, Backend("main") as b1, Backend("api") as b2, Backend("wild") as b3, \
            Backend("pr") as b4:
        u = r.url
        ok(u, "domain", "add", "shop.example", "--tenant", "acme", "--backend", b1.addr)
        ok(u, "path", "add", "shop.example", "/api", b2.addr)
        ok(u, "domain", "add", "*.wild.example", "--tenant", "acme", "--backend", b3.addr)
        ok(u, "pattern", "add", "^pr-(\\d+)\\.prev\\.example$", "acme", "127.0.0.1:%d" % b4.port)
        cases = [("shop.example", "/", "main"), ("shop.example", "/api/x", "api"),
                 ("a.wild.example", "/", "wild"), ("pr-7.prev.example", "/", "pr")]
        names = {b1.addr: "main", b2.addr: "api", b3.addr: "wild", b4.addr: "pr"}
        with Tollgate(redis=u) as tg:
            for host, path, want in cases:
                d = ok_json(u, "domain", "show", host, "--path", path)
                assert names[d["path_backends"]] == want, (host, path, d)
                # The backend may answer 404 for the path itself; X-Backend says who answered.
                status, headers, _ = http(tg.port, "GET", path, host)
                assert headers.get("x-backend") == want, (host, path, status, headers)
            rc, _, _ = ctl(u, "domain", "show", "unknown.example")
            assert rc == 3
            status, _, _ = http(tg.port, "GET", "/", "unknown.example")
            assert status == 404


def test_ctl_refuses_a_pattern_or_path_rule_past_what_tollgate_reads():
    """tollgate reads the first 1,024 entries of tg:patterns and of a host's
    path rules: a 1,025th would be ignored without a word (or, with --first,
    push the last one out), so tollgate-ctl refuses it and says why."""
    with Redis() as r:
        for key in ("tg:patterns", "tg:paths:app.test"):
            for i in range(0, 1024, 256):
                r.cmd("RPUSH", key, *["^h%d\\.test$ t 127.0.0.1:1" % j if key == "tg:patterns"
                                      else "/p%d 127.0.0.1:1" % j for j in range(i, i + 256)])
        for args in (("pattern", "add", "^late\\.test$", "t", "127.0.0.1:2"),
                     ("pattern", "add", "^late\\.test$", "t", "127.0.0.1:2", "--first"),
                     ("path", "add", "app.test", "/late", "127.0.0.1:2")):
            rc, out, err = ctl(r.url, *args)
            assert rc == 2 and "the most tollgate reads (1024)" in err, (args, rc, out, err)
        assert int(r.cmd("LLEN", "tg:patterns")) == 1024
        assert int(r.cmd("LLEN", "tg:paths:app.test")) == 1024


# ---------------------------------------------------------------- hosts, JSON and stdout

def test_ctl_ipv6_literal_host_is_kept_and_its_port_refused():
    """A HOST "[v6]" is stored bracketed and lowercased, the key the proxy
    looks up for a Host header "[v6]:port"; "[v6]:port" is refused like
    "name:port" (exit 2, nothing written), never stored without its port."""
    with Redis() as r, Backend("v6") as b:
        u = r.url
        for host in ("[::1]:80", "[2001:db8::1]:8080", "[::1]:", "*.[::1]:80", "x.example:80"):
            for args in (("domain", "add", host, "--tenant", "t", "--backend", "10.0.0.1:80"),
                         ("domain", "rm", host), ("domain", "show", host),
                         ("path", "add", host, "/a", "10.0.0.1:80"), ("path", "list", host)):
                rc, out, err = ctl(u, *args)
                assert rc == 2 and "must not include a port" in err, (args, rc, out, err)
        assert r.cmd("DBSIZE") == 0, r.cmd("SCAN", "0")

        d = ok_json(u, "domain", "add", "[2001:DB8::1]", "--tenant", "t", "--backend", b.addr)
        assert d["host"] == "[2001:db8::1]" and d["key"] == "tg:domain:[2001:db8::1]", d
        assert hgetall(r, "tg:domain:[2001:db8::1]")["backends"] == b.addr
        assert r.cmd("DBSIZE") == 1
        d = ok_json(u, "domain", "show", "[2001:db8::1]")
        assert d["match"] == "exact" and d["backends"] == b.addr, d
        with Tollgate(redis=u) as tg:
            status, headers, _ = http(tg.port, "GET", "/", "[2001:DB8::1]:8080")
            assert headers.get("x-backend") == "v6", (status, headers)


def test_ctl_json_is_valid_utf8_whatever_redis_holds():
    """Bytes that are not well-formed UTF-8 (RFC 3629) come out as \\u00XX of
    the byte; well-formed sequences are copied; control characters escaped."""
    cases = [
        (b"t\xff", "t\u00ff"),
        (b"\xc0\xaf", "\u00c0\u00af"),                          # overlong '/'
        (b"\xed\xa0\x80", "\u00ed\u00a0\u0080"),                # a surrogate
        (b"\xf4\x90\x80\x80", "\u00f4\u0090\u0080\u0080"),      # above U+10FFFF
        (b"x\xe2\x82", "x\u00e2\u0082"),                        # cut short at the end
        (b"\xe2\x82x", "\u00e2\u0082x"),                        # cut short before ASCII
        (b"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbf", "caf\u00e9 \u20ac \U0001F600 \uffff"),
        (b"a\x01\x1f\x7f\"\\\n\t", "a\u0001\u001f\u007f\"\\\n\t"),
    ]
    with Redis() as r:
        u = r.url
        for i, (raw, _) in enumerate(cases):
            r.cmd("HSET", "tg:domain:d%d.example" % i, "tenant", raw, "backends", raw)
        r.cmd("HSET", b"tg:domain:k\xff.example", "tenant", "t", "backends", "10.0.0.1:80")
        r.cmd("RPUSH", "tg:paths:d0.example", b"/\xff\xfe 10.0.0.1:80")
        r.cmd("RPUSH", "tg:patterns", b"^\xff$ t\xff a:1")

        def doc(*args, want_rc=0):
            rc, out, err = ctl_raw(u, *args, json_out=True)
            assert rc == want_rc, (args, rc, out, err)
            return json.loads(out.decode("utf-8"))     # strict: no surrogates, no stray bytes

        rows = {row["host"]: row for row in doc("domain", "list")}
        assert rows["k\u00ff.example"]["tenant"] == "t", rows
        for i, (_, want) in enumerate(cases):
            row = rows["d%d.example" % i]
            assert row["tenant"] == want and row["backends"] == want, (i, row, want)
        d = doc("domain", "show", "d0.example", want_rc=4)
        assert d["tenant"] == "t\u00ff" and d["error"], d
        rules = doc("path", "list", "d0.example")["rules"]
        assert rules[0]["rule"] == "/\u00ff\u00fe 10.0.0.1:80", rules
        pats = doc("pattern", "list")
        assert pats[0]["line"] == "^\u00ff$ t\u00ff a:1", pats
        rc, out, _ = ctl_raw(u, "domain", "list", json_out=True)
        assert b'"t\\u00ff"' in out and b"\xff" not in out, out


def test_ctl_stdout_write_error_is_an_error():
    """Output that cannot be written (here /dev/full) is an error: a message
    on stderr and exit 1, or the command's own non-zero status."""
    with Redis() as r:
        u = r.url
        ok(u, "domain", "add", "a.example", "--tenant", "t", "--backend", "10.0.0.1:80")
        cases = [(("--json", "domain", "list"), 1), (("domain", "list"), 1),
                 (("domain", "show", "a.example"), 1), (("--help",), 1), (("domain", "add", "--help"), 1),
                 (("domain", "add", "b.example", "--tenant", "t", "--backend", "10.0.0.2:80"), 1),
                 (("--json", "domain", "show", "nope.example"), 3)]
        with open("/dev/full", "wb") as full:
            for args, want in cases:
                p = subprocess.run(ctl_argv(u, *args), stdout=full, stderr=subprocess.PIPE, timeout=20)
                err = p.stderr.decode(errors="replace")
                assert p.returncode == want, (args, p.returncode, err)
                assert "cannot write the output to stdout: No space left on device" in err, (args, err)
        # The same commands with a working stdout succeed, and a command that
        # writes nothing on stdout does not fail because stdout is closed.
        for args, want in cases:
            rc, out, err = ctl(u, *args)
            assert rc == (0 if want == 1 else want) and out and "cannot write" not in err, (args, rc, out, err)
        p = subprocess.run(ctl_argv(u, "domain", "rm", "nope.example"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=20, preexec_fn=lambda: os.close(1))
        assert p.returncode == 3 and b"cannot write" not in p.stderr, (p.returncode, p.stderr)


def test_ctl_concurrent_adds_keep_the_limits_and_no_duplicates():
    """The checks (a full list, a duplicate) and the push are one
    transaction (WATCH ... EXEC, checked again when another writer got in
    between): 30 pattern adds racing at 1020 patterns all passed the check
    and left 1050 (tollgate reads 1024); 5 identical path adds left 5
    copies.  Redis holds every write back (CLIENT PAUSE WRITE) while the
    clients check, so that all of them check before any writes."""
    with Redis() as r:
        r.pipeline(*[("RPUSH", "tg:patterns", "^p%d\\.test$ t 127.0.0.1:80" % i) for i in range(1020)])

        def burst(args_list):
            r.cmd("CLIENT", "PAUSE", "1500", "WRITE")
            procs = [subprocess.Popen(ctl_argv(r.url, *a, extra=["--timeout", "10"]), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE) for a in args_list]
            return [p.wait(timeout=60) for p in procs]
        codes = burst([["pattern", "add", "^q%d\\.test$" % i, "t", "127.0.0.1:80"] for i in range(30)])
        assert r.cmd("LLEN", "tg:patterns") == 1024, r.cmd("LLEN", "tg:patterns")
        assert sorted(codes) == [0] * 4 + [2] * 26, codes
        codes = burst([["path", "add", "h.test", "/same/", "127.0.0.1:81"]] * 5)
        assert r.cmd("LRANGE", "tg:paths:h.test", "0", "-1") == ["/same/ 127.0.0.1:81"]
        assert sorted(codes) == [0] + [2] * 4, codes
