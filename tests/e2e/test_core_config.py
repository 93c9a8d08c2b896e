"""Configuration checks that `tollgate -t` and start-up share (issue 2):
what -t calls ok must not then fail to start for a reason -t could see.
tls-listen (no TLS layer yet), unopenable access-log/error-log, an
unreadable cap-page and max-header-size over buffer-size fail both -t and
start with FILE:LINE (or the flag's name) and the reason.  A listen or
admin-listen address another process already listens on is refused at
start ("address already in use") instead of being shared through
SO_REUSEPORT, and a reload that adds such an address keeps the running
configuration.  Since the config audit, -t also refuses what start-up
could not run: Redis URLs the client refuses, overlapping listener
addresses (compared as numbers), `error-log off`; and start-up binds every
listen address -t accepts."""

import os
import signal
import socket
import subprocess
import time

from tglib import *


def run_tollgate(*args, timeout=10):
    return subprocess.run([TOLLGATE] + list(args), capture_output=True, timeout=timeout, text=True)


def write_conf(name, text):
    path = os.path.join(tmpdir(), name)
    with open(path, "w") as f:
        f.write(text)
    return path


def start_args(port=None, admin=None):
    """Loopback listeners on free ports, so that a start that passes the
    checks binds nothing anyone else uses."""
    return ["--listen", "127.0.0.1:%d" % (port or free_port()),
            "--admin-listen", "127.0.0.1:%d" % (admin or free_port()), "--workers", "1"]


def assert_refused(r, *wants):
    out = r.stdout + r.stderr
    assert r.returncode == 1, (r.returncode, out)
    for want in wants:
        assert want in out, "%r not in %r" % (want, out)


def check_and_start(conf_text, *wants, extra=()):
    """-t -c FILE and a start with the same file both exit 1 naming wants
    ("{path}" in a want is the config file's path)."""
    path = write_conf("t.conf", conf_text)
    wants = [w.replace("{path}", path) for w in wants]
    r = run_tollgate("-t", "-c", path, *extra)
    assert_refused(r, *wants)
    assert "configuration test failed" in r.stderr, r.stderr
    r = run_tollgate("-c", path, *(start_args() + list(extra)))
    assert_refused(r, *wants)


def test_check_and_start_refuse_a_backend_name_that_does_not_resolve():
    """Static backends named by DNS names are resolved once, by the main
    thread, for -t as for start-up (-t called such a file ok, and start-up then
    failed); the error names the route's line."""
    os.environ.setdefault("RES_OPTIONS", "timeout:1 attempts:1")     # a DNS server that does not answer
    check_and_start("route ok.test=127.0.0.1:9\n\nroute a.test=nosuch-host.invalid:80\n",
                    "{path}:3: route a.test: cannot resolve backend nosuch-host.invalid")
    r = run_tollgate("-t", "--route", "a.test=nosuch-host.invalid:80")
    assert_refused(r, "--route a.test: cannot resolve backend nosuch-host.invalid")


def test_backend_names_are_resolved_once_and_shared_by_routes():
    """A backend given by name goes through getaddrinfo once (main thread),
    however many routes name it; every route and worker gets its address.
    "127.1" is a name to getaddrinfo (inet_aton form), no DNS needed."""
    with Backend("b1") as b1, Backend("b2") as b2:
        p1, p2 = b1.addr.rsplit(":", 1)[1], b2.addr.rsplit(":", 1)[1]
        routes = ["a.test=127.1:%s" % p1, "b.test=127.1:%s,127.1:%s" % (p1, p1), "c.test=127.1:%s" % p2]
        with Tollgate(routes=routes) as tg:
            for _ in range(4):                    # new connections: both workers
                assert http(tg.port, "GET", "/echo", "a.test")[1].get("x-backend") == "b1"
                assert http(tg.port, "GET", "/echo", "b.test")[1].get("x-backend") == "b1"
                assert http(tg.port, "GET", "/echo", "c.test")[1].get("x-backend") == "b2"


def test_check_refuses_tls_listen_with_line():
    check_and_start("listen 127.0.0.1:%d\n# TLS\ntls-listen 127.0.0.1:%d\n" % (free_port(), free_port()),
                    "{path}:3: tls-listen: TLS termination is not available in this version")
    r = run_tollgate("-t", "--tls-listen", "127.0.0.1:%d" % free_port())
    assert_refused(r, "--tls-listen: TLS termination is not available in this version")


def test_check_refuses_unopenable_access_log():
    check_and_start("workers 1\naccess-log /nonexistent/dir/a.log\n",
                    "{path}:2: access-log: cannot open '/nonexistent/dir/a.log': No such file or directory")
    # a flag has no line: the flag is named
    r = run_tollgate("-t", "--access-log", "/nonexistent/dir/a.log")
    assert_refused(r, "--access-log: cannot open '/nonexistent/dir/a.log': No such file or directory")
    r = run_tollgate("--access-log", "/nonexistent/dir/a.log", *start_args())
    assert_refused(r, "--access-log: cannot open '/nonexistent/dir/a.log': No such file or directory")


def test_check_refuses_unopenable_error_log():
    check_and_start("\n\n\nerror-log /nonexistent/e.log\n",
                    "{path}:4: error-log: cannot open '/nonexistent/e.log': No such file or directory")
    r = run_tollgate("-t", "--error-log", "/nonexistent/e.log")
    assert_refused(r, "--error-log: cannot open '/nonexistent/e.log': No such file or directory")


def test_check_opens_logs_without_truncating():
    d = tmpdir()
    access, error = os.path.join(d, "access.log"), os.path.join(d, "new", "error.log")
    os.mkdir(os.path.dirname(error))
    with open(access, "w") as f:
        f.write("earlier line\n")
    path = write_conf("ok.conf", "listen 127.0.0.1:%d\naccess-log %s\nerror-log %s\n" % (free_port(), access, error))
    r = run_tollgate("-t", "-c", path)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "is ok" in r.stdout, r.stdout
    with open(access) as f:
        assert f.read() == "earlier line\n"       # appended to, never truncated
    assert os.path.exists(error)                  # created, as start-up would
    # "-" and off need no file
    r = run_tollgate("-t", "--access-log", "-", "--error-log", "-")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    r = run_tollgate("-t", "--access-log", "off")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


def test_check_refuses_unreadable_cap_page():
    check_and_start("workers 1\ncap-page /nonexistent.html\n",
                    "{path}:2: cap-page: cannot read '/nonexistent.html': No such file or directory")
    d = tmpdir()
    r = run_tollgate("-t", "--cap-page", d)
    assert_refused(r, "--cap-page: cannot read '%s': Is a directory" % d)
    page = os.path.join(d, "cap.html")
    with open(page, "w") as f:
        f.write("<p>over the cap</p>\n")
    r = run_tollgate("-t", "--cap-page", page)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


def test_check_max_header_size_error_has_line():
    check_and_start("workers 1\n# heads\nmax-header-size 512k\n",
                    "{path}:3: max-header-size (524288) must not exceed buffer-size (262144)")
    # both keys in the file: the later one's line
    check_and_start("max-header-size 64k\nworkers 1\nbuffer-size 32k\n",
                    "{path}:3: max-header-size (65536) must not exceed buffer-size (32768)")
    r = run_tollgate("-t", "--max-header-size", "512k")
    assert_refused(r, "--max-header-size: max-header-size (524288) must not exceed buffer-size (262144)")


def test_second_instance_on_same_listen_is_refused():
    with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
        assert http(tg.port, "GET", "/echo", "app.test")[0] == 200
        r = run_tollgate("--listen", "127.0.0.1:%d" % tg.port, "--admin-listen", "127.0.0.1:%d" % free_port(),
                         "--workers", "2", "--route", "app.test=" + b.addr, timeout=scale(10))
        assert_refused(r, "tollgate: --listen 127.0.0.1:%d: address already in use" % tg.port)
        # the first one still has every connection
        for _ in range(20):
            status, headers, _ = http(tg.port, "GET", "/echo", "app.test")
            assert status == 200 and headers["x-backend"] == "b1"
        assert tg.running()


def test_second_instance_on_covering_wildcard_is_refused():
    """0.0.0.0:P overlaps a listener on 127.0.0.1:P: refused too."""
    with Tollgate() as tg:
        r = run_tollgate("--listen", "0.0.0.0:%d" % tg.port, "--admin-listen", "127.0.0.1:%d" % free_port(),
                         "--workers", "1", timeout=scale(10))
        assert_refused(r, "tollgate: --listen 0.0.0.0:%d: address already in use" % tg.port)
        assert tg.running()


def test_second_instance_on_same_ipv6_listen_is_refused():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        raise Skip("no IPv6 loopback here")
    with Backend("b1") as b:
        port = free_port()
        with Tollgate(routes=["app.test=" + b.addr], args=["--listen", "[::1]:%d" % port]) as tg:
            wait_port(port, scale(5), host="::1")
            r = run_tollgate("--listen", "[::1]:%d" % port, "--admin-listen", "127.0.0.1:%d" % free_port(),
                             "--workers", "2", timeout=scale(10))
            assert_refused(r, "tollgate: --listen [::1]:%d: address already in use" % port)
            for _ in range(10):
                with socket.create_connection(("::1", port), timeout=5) as c:
                    c.sendall(b"GET /echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                    data = b""
                    while True:
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                assert data.startswith(b"HTTP/1.1 200"), data[:100]
            assert tg.running()


def test_second_instance_on_same_admin_listen_is_refused():
    """The admin listener never shared its address (no SO_REUSEPORT); it is
    now probed before any proxy listener is bound, so the refused instance
    never holds the proxy port either."""
    with Tollgate() as tg:
        port = free_port()
        r = run_tollgate("--listen", "127.0.0.1:%d" % port, "--admin-listen", "127.0.0.1:%d" % tg.admin_port,
                         "--workers", "1", timeout=scale(10))
        assert_refused(r, "tollgate: --admin-listen 127.0.0.1:%d: address already in use" % tg.admin_port)
        assert tg.admin("/healthz")[0] == 200


def test_reload_adding_a_used_address_keeps_the_running_config():
    with Backend("b1") as b1, Backend("b2") as b2, Tollgate(routes=["other.test=" + b2.addr]) as other:
        port = free_port()
        # listen in the file (a --listen flag would override the file's list)
        with Tollgate(config="listen 127.0.0.1:%d\nroute app.test=%s\n" % (port, b1.addr), listen=False) as tg:
            tg.port = port
            wait_port(port, scale(5))
            assert http(tg.port, "GET", "/echo", "app.test")[1]["x-backend"] == "b1"
            # The reload moves app.test to b2 and adds the other instance's
            # port: refused as a whole, app.test stays on b1.
            tg.write_config("route app.test=%s\nlisten 127.0.0.1:%d\nlisten 127.0.0.1:%d\n"
                            % (b2.addr, tg.port, other.port))
            tg.signal(signal.SIGHUP)
            wait_until(lambda: "address already in use" in tg.log_text(), scale(5), "the reload error in the log")
            log = tg.log_text()
            # the error names the file's line, as every configuration error does
            assert "reload failed, keeping the running configuration: %s:3: listen 127.0.0.1:%d: address already " \
                "in use" % (tg.config_path, other.port) in log, log[-2000:]
            assert http(tg.port, "GET", "/echo", "app.test")[1]["x-backend"] == "b1"
            # A reload that keeps this instance's own address is not probed against itself.
            tg.write_config("route app.test=%s\nlisten 127.0.0.1:%d\n" % (b2.addr, tg.port))
            tg.signal(signal.SIGHUP)
            wait_until(lambda: http(tg.port, "GET", "/echo", "app.test")[1]["x-backend"] == "b2", scale(5),
                       "the second reload applied")
            assert other.running()
            assert http(other.port, "GET", "/echo", "other.test")[1]["x-backend"] == "b2"


def test_reload_refuses_unreadable_cap_page():
    with Backend("b1") as b1, Backend("b2") as b2:
        with Tollgate(config="route app.test=%s\n" % b1.addr) as tg:
            tg.write_config("route app.test=%s\n\ncap-page /nonexistent.html\n" % b2.addr)
            tg.signal(signal.SIGHUP)
            want = "reload failed, keeping the running configuration: %s:3: cap-page: cannot read " \
                   "'/nonexistent.html': No such file or directory" % tg.config_path
            wait_until(lambda: want in tg.log_text(), scale(5), "the reload error in the log")
            assert http(tg.port, "GET", "/echo", "app.test")[1]["x-backend"] == "b1"


def test_reload_changing_a_listen_address_says_it_needs_a_restart():
    """Listeners are bound at start only: a reload that changes one (here
    127.0.0.1:P to 0.0.0.0:P, which the running listener's port covers)
    says in the log that it takes effect at the next restart; a reload that
    keeps the addresses says nothing of the kind."""
    with Backend("b1") as b1, Backend("b2") as b2:
        port = free_port()
        with Tollgate(config="listen 127.0.0.1:%d\nroute app.test=%s\n" % (port, b1.addr), listen=False) as tg:
            tg.port = port
            wait_port(port, scale(5))
            tg.write_config("listen 127.0.0.1:%d\nroute app.test=%s\n" % (port, b2.addr))
            tg.signal(signal.SIGHUP)
            wait_until(lambda: http(tg.port, "GET", "/echo", "app.test")[1]["x-backend"] == "b2", scale(5),
                       "the first reload applied")
            assert "next restart" not in tg.log_text(), tg.log_text()[-2000:]
            tg.write_config("listen 0.0.0.0:%d\nroute app.test=%s\n" % (port, b1.addr))
            tg.signal(signal.SIGHUP)
            wait_until(lambda: "take effect at the next restart" in tg.log_text(), scale(5),
                       "the restart warning in the log")


# ---- regressions from the config audit: -t must refuse what start-up cannot run ----

def start_with_file(path, *extra):
    """Starts tollgate on the file alone (no --listen, which would replace
    the file's list) and a free admin port unless extra sets one."""
    args = ["-c", path, "--workers", "1"]
    if "--admin-listen" not in extra and "admin-listen" not in open(path).read():
        args += ["--admin-listen", "127.0.0.1:%d" % free_port()]
    return run_tollgate(*(args + list(extra)), timeout=scale(10))


def check_and_start_file(conf_text, *wants):
    """-t and a start on the file alone both exit 1 naming wants ("{path}" as in check_and_start)."""
    path = write_conf("t.conf", conf_text)
    wants = [w.replace("{path}", path) for w in wants]
    r = run_tollgate("-t", "-c", path)
    assert_refused(r, *wants)
    assert "configuration test failed" in r.stderr, r.stderr
    assert_refused(start_with_file(path), *wants)


def test_more_than_32_listen_addresses_are_all_bound():
    """Config takes up to 64 listen addresses (CFG_MAX_LISTEN); the server
    bound the first 32 and dropped the rest without a word.  Every one now
    accepts, the start-up line lists them all, and a 65th is refused by -t
    with its line."""
    ports = [free_port() for _ in range(64)]
    text = "".join("listen 127.0.0.1:%d\n" % p for p in ports)
    path = write_conf("many.conf", text)
    r = run_tollgate("-t", "-c", path)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    with Tollgate(config=text, listen=False, workers=1) as tg:
        for p in ports:
            wait_port(p, scale(5), tg.proc)
        listed = " ".join("127.0.0.1:%d" % p for p in ports)
        wait_until(lambda: "listening on " + listed in tg.log_text(), scale(5), "the start-up line")
    path = write_conf("too-many.conf", text + "listen 127.0.0.1:%d\n" % free_port())
    assert_refused(run_tollgate("-t", "-c", path), "%s:65: listen: too many addresses (max 64)" % path)


def test_check_accepts_only_redis_urls_the_client_takes():
    """Every Redis URL -t accepts must start (the client in routing/redis.c
    refused some with "bad Redis URL", exit 1, after -t said ok); the others
    are refused by -t, at start and on SIGHUP, naming FILE:LINE or --redis.
    Redis is down (a closed port, a missing socket): tollgate starts anyway."""
    port = free_port()
    sock = os.path.join(tmpdir(), "r.sock")
    h = "127.0.0.1:%d" % port
    table = [   # (url, None if accepted else part of the message)
        ("redis://:%%zz@%s" % h, "in a password '%' starts an escape of two hex digits"),
        ("redis://:ab%%4@%s" % h, "in a password '%' starts an escape of two hex digits"),
        ("redis://:a%%00b@%s" % h, "the password must not contain %00 (a NUL byte)"),
        ("redis://:%s@%s" % ("a" * 256, h), "password longer than 255 bytes"),
        ("redis://:%%41%s@%s" % ("a" * 255, h), "password longer than 255 bytes"),
        ("redis://:a/b@%s" % h, "write '/' in a password as %2F"),
        ("redis://%s/1234567" % h, "database must be a number of up to 6 digits"),
        ("unix://%s?db=1234567" % sock, "only ?db=N (N a number of up to 6 digits)"),
        ("unix://:pw@/tmp/a@b.sock", "the password runs to the last '@' before the socket path"),
        ("redis://%s" % h, None), ("redis://%s/" % h, None), ("redis://%s/999999" % h, None),
        ("REDIS://%s/1" % h, None), ("redis://:pw@%s/0" % h, None), ("redis://:p@ss@%s" % h, None),
        ("redis://:p%%2Fw%%40x%%25@%s" % h, None), ("redis://:%s@%s" % ("a" * 255, h), None),
        ("redis://localhost:%d" % port, None), ("unix://%s" % sock, None), ("unix://:pw@%s?db=999999" % sock, None),
    ]
    for url, want in table:
        r = run_tollgate("-t", "--redis", url)
        if r.returncode == 0:
            # -t called it ok: it must start, and stay up with Redis down
            with Tollgate(redis=url, workers=1) as tg:
                time.sleep(scale(0.3))
                assert tg.running(), (url, tg.log_text()[-2000:])
                assert "bad Redis URL" not in tg.log_text(), (url, tg.log_text()[-2000:])
            assert want is None, "-t accepted %r, which should be refused (%s)" % (url, want)
            continue
        assert want is not None, "-t refused %r: %s" % (url, r.stderr)
        shown = url if len(url) <= 80 else url[:80] + "..."
        assert_refused(r, "--redis: '%s': %s" % (shown, want))
        check_and_start_file("workers 1\nredis %s\n" % url, "{path}:2: redis: '%s': %s" % (shown, want))
    # SIGHUP: refused with the line, the running configuration stays
    with Backend("b1") as b1:
        with Tollgate(config="route app.test=%s\n" % b1.addr) as tg:
            tg.write_config("route app.test=%s\nredis redis://:a/b@%s\n" % (b1.addr, h))
            tg.signal(signal.SIGHUP)
            want = "reload failed, keeping the running configuration: %s:2: redis: 'redis://:a/b@%s': " \
                   "write '/' in a password as %%2F" % (tg.config_path, h)
            wait_until(lambda: want in tg.log_text(), scale(5), "the reload error in the log")
            assert http(tg.port, "GET", "/echo", "app.test")[0] == 200


def test_check_refuses_overlapping_listener_addresses():
    """Addresses are compared as numbers: 0.0.0.0:P takes 127.0.0.1:P (start
    failed with "address already in use" after -t said ok), [0::1] is [::1].
    IPv6 sockets are IPv6-only, so [::]:P and 0.0.0.0:P do not overlap."""
    p = free_port()
    check_and_start_file("listen 0.0.0.0:%d\nadmin-listen 127.0.0.1:%d\n" % (p, p),
                         "{path}:2: admin-listen 127.0.0.1:%d overlaps listen 0.0.0.0:%d" % (p, p))
    check_and_start_file("admin-listen [0::1]:%d\n# v6\nlisten [::1]:%d\n" % (p, p),
                         "{path}:3: admin-listen [0::1]:%d overlaps listen [::1]:%d" % (p, p))
    check_and_start_file("listen [::1]:%d\nlisten [0:0::1]:%d\n" % (p, p),
                         "{path}:2: listen: '[0:0::1]:%d' given twice (as [::1]:%d)" % (p, p))
    check_and_start_file("listen 127.0.0.1:%d\nlisten 0.0.0.0:%d\n" % (p, p),
                         "{path}:2: listen: '0.0.0.0:%d' overlaps 127.0.0.1:%d" % (p, p))
    r = run_tollgate("-t", "--listen", "0.0.0.0:%d" % p, "--admin-listen", "127.0.0.1:%d" % p)
    assert_refused(r, "--admin-listen: admin-listen 127.0.0.1:%d overlaps listen 0.0.0.0:%d" % (p, p))
    # an IPv4-mapped address cannot be bound by an IPv6-only socket
    check_and_start_file("listen [::ffff:127.0.0.1]:%d\n" % p,
                         "{path}:1: listen: '[::ffff:127.0.0.1]:%d': IPv6 listeners are IPv6-only" % p)
    # different families on one port are no overlap
    r = run_tollgate("-t", "--listen", "127.0.0.1:%d" % p, "--admin-listen", "[::1]:%d" % p)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


def test_listen_off_without_listener_names_its_line():
    check_and_start_file("workers 1\n\nlisten off\n",
                         "{path}:3: listen off leaves no listener: give at least one listen or tls-listen address")
    assert_refused(run_tollgate("-t", "--listen", "off"), "--listen: listen off leaves no listener")


def test_check_messages_name_the_real_problem():
    # a UTF-8 byte order mark shows, escaped, with a hint
    check_and_start_file("\ufeffworkers 1\n", "{path}:1: unknown key '\\xef\\xbb\\xbfworkers' "
                         "(the file starts with a UTF-8 byte order mark: save it without one)")
    # a number too long for the range is out of range, with the range
    check_and_start_file("workers 99999999999999999999\n",
                         "{path}:1: workers: '99999999999999999999' out of range 1..1024")
    assert_refused(run_tollgate("-t", "--workers", "99999999999999999999"),
                   "--workers: '99999999999999999999' out of range 1..1024")
    # the one-year caps print plainly
    check_and_start_file("route-cache-ttl 99999999\n",
                         "{path}:1: route-cache-ttl: '99999999' out of range: must be > 0 and <= 31536000 seconds")
    assert_refused(run_tollgate("-t", "--route-stale-max-age", "31536001"),
                   "--route-stale-max-age: '31536001' out of range: must be >= 0 and <= 31536000 seconds")
    r = run_tollgate("-t", "--route-cache-ttl", "31536000", "--route-stale-max-age", "31536000")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


def test_error_log_off_is_refused_not_a_file_named_off():
    """error-log has no off (errors always go somewhere); `error-log off`
    used to create a file named "off" in the working directory, at -t,
    start and on every SIGHUP."""
    d = tmpdir()
    path = write_conf("t.conf", "workers 1\nerror-log off\n")
    want = "%s:2: error-log: off is not a destination: give - (stderr) or a FILE, /dev/null to discard" % path
    for args in (["-t", "-c", path], ["-c", path, "--admin-listen", "127.0.0.1:%d" % free_port(),
                                       "--listen", "127.0.0.1:%d" % free_port()]):
        r = subprocess.run([TOLLGATE] + args, capture_output=True, timeout=scale(10), text=True, cwd=d)
        assert_refused(r, want)
    assert_refused(run_tollgate("-t", "--error-log", "off"), "--error-log: off is not a destination")
    assert not os.path.exists(os.path.join(d, "off")), os.listdir(d)
    # a reload to it is refused too; /dev/null discards
    with Tollgate(config="workers 1\n") as tg:
        tg.write_config("error-log off\n")
        tg.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed, keeping the running configuration: %s:1: error-log: off is not a "
                   "destination" % tg.config_path in tg.log_text(), scale(5), "the reload error in the log")
    r = run_tollgate("-t", "--error-log", "/dev/null")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


def test_closed_stderr_does_not_send_error_lines_into_the_access_log():
    """Started with descriptor 2 closed (`2>&-`, some service managers), the
    access log must not become "stderr": descriptors 0-2 are filled with
    /dev/null first, so error-log lines never land among access lines."""
    d = tmpdir()
    alog = os.path.join(d, "access.log")
    port, admin = free_port(), free_port()
    with Backend("b1") as b:
        # No TG_WRAPPER: valgrind itself cannot start with descriptor 2 closed.
        argv = [TOLLGATE, "--listen", "127.0.0.1:%d" % port,
                                "--admin-listen", "127.0.0.1:%d" % admin, "--workers", "1",
                                "--access-log", alog, "--route", "app.test=" + b.addr]
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             preexec_fn=lambda: os.close(2))
        try:
            wait_port(port, scale(10), p)
            assert http(port, "GET", "/echo?one", "app.test")[0] == 200
            assert http(port, "GET", "/echo?two", "unknown.test")[0] == 404
            wait_until(lambda: sum(1 for l in open(alog) if "/echo?two" in l) == 1, scale(3),
                       "the second access line")
        finally:
            p.terminate()
            p.wait(scale(10))
        with open(alog, errors="replace") as f:
            lines = f.read().splitlines()
        assert len(lines) == 2, lines
        assert '"GET /echo?one" 200 ' in lines[0] and '"GET /echo?two" 404 ' in lines[1], lines
