"""Configuration checks that `tollgate -t` and start-up share (issue 2):
what -t calls ok must not then fail to start for a reason -t could see.
tls-listen (no TLS layer yet), unopenable access-log/error-log, an
unreadable cap-page and max-header-size over buffer-size fail both -t and
start with FILE:LINE (or the flag's name) and the reason.  A listen or
admin-listen address another process already listens on is refused at
start ("address already in use") instead of being shared through
SO_REUSEPORT, and a reload that adds such an address keeps the running
configuration."""

import os
import signal
import socket
import subprocess

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
        assert_refused(r, "tollgate: listen 127.0.0.1:%d: address already in use" % tg.port)
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
        assert_refused(r, "tollgate: listen 0.0.0.0:%d: address already in use" % tg.port)
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
            assert_refused(r, "tollgate: listen [::1]:%d: address already in use" % port)
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
        assert_refused(r, "admin-listen 127.0.0.1:%d: address already in use" % tg.admin_port)
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
            assert "reload failed, keeping the running configuration: listen 127.0.0.1:%d: address already in use" \
                % other.port in log, log[-2000:]
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
