"""tglib: the harness every tollgate end-to-end test uses.

A test module is tests/e2e/test_<area>.py holding plain functions named test_*;
tests/e2e/runner.py runs each one in its own process (own process group, killed
after TIMEOUT seconds, default 120; a module may set TIMEOUT = N).  A test
passes when it returns, fails on any exception (use plain `assert`), and is
skipped by `raise tglib.Skip("why")` (use only for a missing optional tool).
Everything a test starts is stopped when the `with` block ends, and again at
exit, so a failing assert never leaks a process.

    from tglib import *

    def test_proxy_hello():
        with Backend("b1") as b, Tollgate(routes=["app.test=" + b.addr]) as tg:
            status, headers, body = http(tg.port, "GET", "/echo", "app.test")
            assert status == 200 and headers["x-backend"] == "b1"

Processes
  Redis()           redis-server on a free loopback port, no persistence.
                    .port .url  .cmd(*args) -> reply (RESP: str/bytes/int/list/None,
                    raises RedisError on "-ERR") .kill() .start() (same port)
                    .pause() (SIGSTOP) .resume() .stop()
  Backend(name)     tests/e2e/backend.py (see its docstring for the routes).
                    .port .addr ("127.0.0.1:P") .name .stop()
  RawBackend(serve) a hand-written backend for answers backend.py would never
                    give: serve(sock, n) runs for the n-th accepted connection
                    (one at a time, in a thread; sock has a 5 s timeout); the
                    connection is closed when serve returns, unless it returns
                    True (then held open until the backend stops).  .addr .port
                    .close(); read_request_head(sock) reads up to the blank line.
  Tollgate(routes=[...], redis=url, args=[...], config="text", drain_timeout=5,
           workers=2, log_level="info", check_exit=True, env={...})
                    the built binary with --listen/--admin-listen on free ports,
                    --access-log to a temp file, stderr+stdout to a temp log.
                    .port .admin_port .pid .log_path .access_log_path .config_path
                    .stop() -> exit code (SIGTERM, wait) .kill() .signal(sig)
                    .log_text() .access_log_lines() .write_config(text) .rss_kb()
                    .admin(path) -> (status, headers, body)
                    .metrics() -> {"name{labels}": value} from /metrics
                    On leaving the `with` block it is stopped with SIGTERM; when
                    check_exit is true and the block raised nothing, a non-zero
                    exit code or a sanitizer report in the log fails the test.
                    A config file given as text is written to .config_path and
                    passed with -c.  Command-line --listen replaces the file's.

Clients
  http(port, method, path, host, headers=None, body=None, timeout=10)
                    -> (status, headers dict with lowercase names, body bytes)
                    (http.client; repeated headers are joined with ", ")
  raw(port, data, timeout=5, shut=False) -> every byte read until the peer
                    closes or `timeout` passes without a byte
  RawConn(port)     keep-alive raw client for pipelining and framing tests:
                    .send(bytes) .read_response(head=False) -> Response
                    (.status .reason .version .headers [(name, value)] .header(name)
                    .body .raw) .read_until(b"...") .recv_some() .is_closed(timeout)
                    .read_response_sha() -> (Response, length, sha256 hex)
                    .read_to_eof()
                    .close()
  parse_responses(data) -> [Response] for a byte string holding several

Helpers
  free_port()  wait_port(port, timeout=10)  wait_until(fn, timeout, what)
  pattern(n) / pattern_sha256(n): the bytes /bytes/N and friends send
  scale(seconds): a timeout stretched when TG_WRAPPER (valgrind) or a
  sanitizer build slows the binary (TG_SLOW=factor overrides)
  SANITIZED: true under ASan or a wrapper (skip RSS assertions then)
  WRAPPER: the TG_WRAPPER command as a list (empty when none)
  RssSampler(pid): `with RssSampler(tg.pid) as s: ...` then s.max_kb
  BUILDDIR, SRCDIR, TOLLGATE, TOLLGATE_CTL, PYTHON

Environment
  TG_BUILDDIR  build tree holding ./tollgate (default: $repo/build, else $repo)
  TG_WRAPPER   command prefix, e.g. "valgrind --error-exitcode=99 -q"
  TG_KEEP      keep the temp dirs (logs) of the test for inspection
"""

import atexit
import hashlib
import http.client as _http_client
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

__all__ = ["Redis", "RedisError", "Backend", "RawBackend", "one_shot_backend", "read_request_head", "Tollgate", "http", "raw", "RawConn", "Response",
           "parse_responses", "free_port", "wait_port", "wait_until", "pattern", "pattern_sha256",
           "scale", "SANITIZED", "RssSampler", "Skip", "BUILDDIR", "SRCDIR", "TOLLGATE", "TOLLGATE_CTL", "PYTHON", "E2E_DIR",
           "tmpdir", "WRAPPER"]

PYTHON = "/usr/bin/python3"
E2E_DIR = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("TG_SRCDIR") or os.path.dirname(os.path.dirname(E2E_DIR))


def _find_builddir():
    env = os.environ.get("TG_BUILDDIR")
    if env:
        return os.path.abspath(env)
    for cand in ("build", "build-asan", "."):
        d = os.path.abspath(os.path.join(SRCDIR, cand))
        if os.access(os.path.join(d, "tollgate"), os.X_OK):
            return d
    return os.path.abspath(os.path.join(SRCDIR, "build"))


BUILDDIR = _find_builddir()
TOLLGATE = os.path.join(BUILDDIR, "tollgate")
TOLLGATE_CTL = os.path.join(BUILDDIR, "tollgate-ctl")
WRAPPER = shlex.split(os.environ.get("TG_WRAPPER", ""))


class Skip(Exception):
    """Raised by a test that cannot run here (a missing optional tool)."""


def _sanitized():
    try:
        with open(os.path.join(BUILDDIR, "config.log"), errors="replace") as f:
            return "--enable-sanitizers" in f.read(20000)
    except OSError:
        return False


# True when the binary runs under ASan/UBSan or a TG_WRAPPER (memory figures
# such as RSS are then meaningless).
SANITIZED = _sanitized() or bool(WRAPPER)


def _slow_factor():
    if os.environ.get("TG_SLOW"):
        return float(os.environ["TG_SLOW"])
    if WRAPPER:
        return 10.0
    return 2.0 if SANITIZED else 1.0


SLOW = _slow_factor()


def scale(seconds):
    """A timeout stretched for slow builds (valgrind, sanitizers)."""
    return seconds * SLOW


# ---------------------------------------------------------------- temp dirs, cleanup

_procs = []      # every Popen we started, stopped at exit
_tmpdirs = []


def tmpdir():
    """A fresh temp directory removed at exit (kept when TG_KEEP is set)."""
    d = tempfile.mkdtemp(prefix="tg-e2e-")
    _tmpdirs.append(d)
    return d


def _cleanup():
    for p in _procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait(5)
            except Exception:
                pass
    if not os.environ.get("TG_KEEP"):
        for d in _tmpdirs:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def _spawn(argv, log_path, env=None):
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    log = open(log_path, "ab")
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=full_env)
    finally:
        log.close()
    _procs.append(p)
    return p


def _stop_proc(p, sig=signal.SIGTERM, timeout=10):
    """Sends sig, waits up to timeout, then SIGKILL; returns the exit code."""
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGCONT)
            p.send_signal(sig)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        except ProcessLookupError:
            pass
    return p.returncode


# ---------------------------------------------------------------- ports

_given_ports = set()


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now and that this
    process has not handed out before (the kernel may offer a just-closed
    ephemeral port twice in a row)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given_ports:
            _given_ports.add(port)
            return port
    raise RuntimeError("no free port found")


def wait_port(port, timeout=10, proc=None, host="127.0.0.1"):
    """Waits until host:port accepts a connection; raises on timeout or when proc exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before port %d opened" % (proc.returncode, port))
        if time.monotonic() > deadline:
            raise TimeoutError("port %d not accepting after %.1fs" % (port, timeout))
        time.sleep(0.05)


def wait_until(fn, timeout=5, what="condition", interval=0.05):
    """Polls fn() until it returns a true value (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------- body pattern

_PATTERN_BLOCK = bytes(i % 251 for i in range(251 * 261))


def pattern(n, offset=0):
    """The bytes [offset, offset+n) of the backend's body pattern (byte i = i % 251)."""
    out = bytearray()
    pos = offset
    while len(out) < n:
        start = pos % 251
        take = min(n - len(out), len(_PATTERN_BLOCK) - start)
        out += _PATTERN_BLOCK[start:start + take]
        pos += take
    return bytes(out)


def pattern_sha256(n):
    """sha256 hex digest of pattern(n), computed without holding n bytes."""
    h = hashlib.sha256()
    full, rest = divmod(n, len(_PATTERN_BLOCK))
    for _ in range(full):
        h.update(_PATTERN_BLOCK)
    h.update(_PATTERN_BLOCK[:rest])
    return h.hexdigest()


# ---------------------------------------------------------------- Redis

class RedisError(Exception):
    pass


class Redis:
    """redis-server on a free loopback port; see the module docstring."""

    def __init__(self, port=None, args=()):
        self.port = port or free_port()
        self.url = "redis://127.0.0.1:%d" % self.port
        self.dir = tmpdir()
        self.log_path = os.path.join(self.dir, "redis.log")
        self.args = list(args)
        self.proc = None
        self.start()

    def start(self):
        if self.proc is not None and self.proc.poll() is None:
            return
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--protected-mode", "no"] + self.args
        self.proc = _spawn(argv, self.log_path)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.cmd("PING") == "PONG":
                    return
            except (OSError, RedisError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited: " + self._log_tail())
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not answer PING")
            time.sleep(0.05)

    def _log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def cmd(self, *args, timeout=5):
        """Sends one command on a fresh connection and returns the decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(_resp_encode(args))
            return _RespReader(s).read()

    def pipeline(self, *commands, timeout=5):
        """Sends several commands (tuples) at once; returns the list of replies
        (a RedisError instance in place of an error reply)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(b"".join(_resp_encode(c) for c in commands))
            r = _RespReader(s)
            out = []
            for _ in commands:
                try:
                    out.append(r.read())
                except RedisError as e:
                    out.append(e)
            return out

    def kill(self):
        """SIGKILL: Redis vanishes at once (connections reset)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def pause(self):
        """SIGSTOP: Redis keeps its sockets but answers nothing."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc:
            _stop_proc(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, (int, float)):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _RespReader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("redis closed the connection")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self._exact(n)
            try:
                return data.decode()
            except UnicodeDecodeError:
                return data
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            out = []
            for _ in range(n):
                try:
                    out.append(self.read())
                except RedisError as e:
                    out.append(e)
            return out
        raise RedisError("bad RESP line %r" % line)


# ---------------------------------------------------------------- Backend

class Backend:
    """tests/e2e/backend.py on a free port; see its docstring for routes."""

    def __init__(self, name="backend", port=None, host="127.0.0.1"):
        self.name = name
        self.port = port or free_port()
        self.addr = "%s:%d" % (host, self.port)
        self.dir = tmpdir()
        self.log_path = os.path.join(self.dir, "backend-%s.log" % name)
        self.proc = _spawn([PYTHON, os.path.join(E2E_DIR, "backend.py"), "--port", str(self.port),
                            "--name", name, "--host", host], self.log_path)
        try:
            wait_port(self.port, 10, self.proc, host=host)
        except Exception as e:
            self.stop()
            raise RuntimeError("backend %s did not start (%s):\n%s" % (name, e, self.log_text()[-2000:]))

    def stop(self):
        return _stop_proc(self.proc)

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


# ---------------------------------------------------------------- Tollgate

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer", "Invalid read of size", "Invalid write of size",
                   "Invalid free()", "Conditional jump or move depends on uninitialised",
                   "are definitely lost in loss record")


def read_request_head(sock):
    """Reads from sock until the end of a request head (or EOF); returns the bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        d = sock.recv(65536)
        if not d:
            break
        data += d
    return data


class RawBackend:
    """A raw loopback backend driven by a function; see the module docstring."""

    def __init__(self, serve, backlog=8):
        import threading
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(backlog)
        self.port = self.srv.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.held = []
        self._serve = serve
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        n = 0
        while True:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            s.settimeout(5)
            try:
                keep = self._serve(s, n)
            except OSError:
                keep = False
            n += 1
            if keep:
                self.held.append(s)
            else:
                s.close()

    def close(self):
        self.srv.close()
        for s in self.held:
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def one_shot_backend(answer, hold=0.3):
    """A RawBackend that, on each connection, reads one request head, writes
    `answer`, waits `hold` seconds (so that the close does not race the
    answer) and closes."""
    def serve(s, n):
        read_request_head(s)
        s.sendall(answer)
        time.sleep(hold)
        return False

    return RawBackend(serve)


class Tollgate:
    """The tollgate binary on free loopback ports; see the module docstring."""

    def __init__(self, routes=(), redis=None, args=(), config=None, drain_timeout=5, workers=2,
                 log_level="info", check_exit=True, env=None, wait=True, listen=True):
        self.port = free_port()
        self.admin_port = free_port()
        self.dir = tmpdir()
        self.log_path = os.path.join(self.dir, "tollgate.log")
        self.access_log_path = os.path.join(self.dir, "access.log")
        self.config_path = os.path.join(self.dir, "tollgate.conf")
        self.check_exit = check_exit
        self.exit_code = None
        argv = list(WRAPPER) + [TOLLGATE]
        if listen:
            argv += ["--listen", "127.0.0.1:%d" % self.port]
        argv += ["--admin-listen", "127.0.0.1:%d" % self.admin_port,
                 "--workers", str(workers), "--log-level", log_level,
                 "--access-log", self.access_log_path]
        if drain_timeout is not None:
            argv += ["--drain-timeout", str(drain_timeout)]
        for r in routes:
            argv += ["--route", r]
        if redis:
            argv += ["--redis", redis]
        if config is not None:
            self.write_config(config)
            argv += ["-c", self.config_path]
        argv += list(args)
        self.argv = argv
        if not os.access(TOLLGATE, os.X_OK):
            raise RuntimeError("no tollgate binary at %s (set TG_BUILDDIR)" % TOLLGATE)
        self.proc = _spawn(argv, self.log_path, env)
        self.pid = self.proc.pid
        if wait:
            try:
                if listen:
                    wait_port(self.port, scale(10), self.proc)
                wait_port(self.admin_port, scale(10), self.proc)
                if redis:
                    self._wait_redis_ready(redis)
            except Exception as e:
                self.kill()
                raise RuntimeError("tollgate did not start (%s): %s\nlog:\n%s"
                                   % (e, " ".join(argv), self.log_text()[-3000:]))

    def _wait_redis_ready(self, url):
        """When the Redis at url accepts connections, waits (bounded) until
        /healthz says every worker is connected, so that a test's first
        request does not race tollgate's start-up on a loaded machine.  A
        Redis that is down on purpose is not waited for."""
        m = re.match(r"redis://(?:[^@]*@)?([^:/]+):(\d+)", url)
        if not m:
            return
        try:
            socket.create_connection((m.group(1), int(m.group(2))), timeout=0.5).close()
        except OSError:
            return
        deadline = time.monotonic() + scale(5)
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.admin_port), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                    data = b""
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                if data.split(b"\r\n\r\n", 1)[-1].startswith(b"ok"):
                    return
            except OSError:
                pass
            time.sleep(0.02)

    def write_config(self, text):
        """Writes the config file (call signal(SIGHUP) afterwards to reload)."""
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def access_log_lines(self):
        try:
            with open(self.access_log_path, errors="replace") as f:
                return [l.rstrip("\n") for l in f if l.strip()]
        except OSError:
            return []

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def running(self):
        return self.proc.poll() is None

    def stop(self, timeout=None):
        """SIGTERM, waits (drain timeout + margin), returns the exit code."""
        if timeout is None:
            timeout = scale(30)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("tollgate did not exit within %ss of SIGTERM" % timeout)
        self.exit_code = self.proc.returncode
        return self.exit_code

    def wait(self, timeout=None):
        """Waits for the process to exit by itself; returns the exit code."""
        self.exit_code = self.proc.wait(timeout if timeout is not None else scale(30))
        return self.exit_code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.exit_code = self.proc.returncode

    def _status_kb(self, field):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError("no " + field)

    def rss_kb(self):
        """VmRSS of the process in KiB (from /proc/PID/status)."""
        return self._status_kb("VmRSS")

    def hwm_kb(self):
        """VmHWM, the peak resident set of the process so far, in KiB."""
        return self._status_kb("VmHWM")

    def metrics(self):
        """/metrics as {"name{labels}": value}."""
        values = {}
        for line in self.admin("/metrics")[2].decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def admin(self, path, timeout=5):
        return http(self.admin_port, "GET", path, "127.0.0.1:%d" % self.admin_port, timeout=timeout)

    def sanitizer_report(self):
        """None, or the sanitizer/valgrind report in the log, its first line a
        one-line summary (the error and the first frame in tollgate's code)."""
        text = self.log_text()
        for mark in SANITIZER_MARKS:
            i = text.find(mark)
            if i >= 0:
                line_start = text.rfind("\n", 0, i) + 1
                line_end = text.find("\n", i)
                first = text[line_start:line_end if line_end >= 0 else len(text)].strip()
                frame = ""
                for line in text[i:i + 4000].splitlines()[1:]:
                    if ".c:" in line and "libsanitizer" not in line and "vgpreload" not in line:
                        frame = line.split(" in ", 1)[1] if " in " in line else line.split(": ", 1)[-1]
                        frame = " at " + frame.strip()
                        break
                return "%s%s\n%s" % (first, frame, text[line_start:i + 4000])
        return None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            # keep the original failure, but when the proxy crashed or a
            # sanitizer spoke, that is the reason to report
            try:
                self.proc.wait(0.3)
            except subprocess.TimeoutExpired:
                pass
            died = self.proc.poll()
            report = self.sanitizer_report()
            self.kill()
            sys.stderr.write("---- tollgate log (%s) ----\n%s\n" % (self.log_path, self.log_text()[-4000:]))
            if self.check_exit and exc_type is not KeyboardInterrupt and (report or died is not None):
                why = report.splitlines()[0] if report else (self.log_text().strip().splitlines() or [""])[-1]
                what = "died during the test (exit %s)" % died if died is not None else "reported an error"
                raise AssertionError("tollgate %s: %s" % (what, why)) from exc
            return False
        code = self.stop() if self.proc.poll() is None else self.proc.returncode
        if self.check_exit:
            report = self.sanitizer_report()
            if report:
                raise AssertionError("tollgate: " + report)
            if code != 0:
                raise AssertionError("tollgate exited with %s (expected 0)\nlog:\n%s"
                                     % (code, self.log_text()[-3000:]))
        return False


class RssSampler:
    """Samples a process's VmRSS (KiB) every `interval` s in a thread while
    the `with` block runs:  with RssSampler(tg.pid) as rss: ...; rss.max_kb."""

    def __init__(self, pid, interval=0.1):
        import threading
        self.pid = pid
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self):
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def _run(self):
        while not self._stop.is_set():
            v = self._read()
            if v is not None:
                self.samples.append(v)
            self._stop.wait(self.interval)

    @property
    def max_kb(self):
        return max(self.samples) if self.samples else 0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


# ---------------------------------------------------------------- clients

def http(port, method, path, host, headers=None, body=None, timeout=10):
    """One request on a new connection (http.client) -> (status, headers, body).
    headers is a dict (or list of pairs) sent as given; body bytes/str or None."""
    conn = _http_client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        names = set()
        for k, v in items:
            conn.putheader(k, v)
            names.add(k.lower())
        if isinstance(body, str):
            body = body.encode()
        if body is not None and "content-length" not in names and "transfer-encoding" not in names:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {}
        for k, v in resp.getheaders():
            k = k.lower()
            hdrs[k] = hdrs[k] + ", " + v if k in hdrs else v
        return resp.status, hdrs, data
    finally:
        conn.close()



def raw(port, data, timeout=5, shut=False):
    """Sends data on a new connection and returns every byte read until the peer
    closes or no byte arrives for `timeout` seconds.  shut=True half-closes the
    sending side after data (some servers then close at once)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not d:
                break
            out += d
        return out


class Response:
    def __init__(self):
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers = []
        self.body = b""
        self.raw = b""
        self.framing = "none"

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def __repr__(self):
        return "<Response %s %d %s, %d body bytes>" % (self.version, self.status, self.reason, len(self.body))


class RawConn:
    """A raw keep-alive client connection: write any bytes, read responses one
    at a time with their framing (Content-Length, chunked, close-delimited)."""

    def __init__(self, port, timeout=10, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def recv_some(self, n=65536):
        """Reads what is available (blocks up to timeout); b"" at EOF."""
        if self.buf:
            d, self.buf = self.buf, b""
            return d
        try:
            d = self.sock.recv(n)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
        return d

    def read_response_sha(self):
        """Reads one response without keeping its body -> (Response, body
        length, body sha256 hex)."""
        h = hashlib.sha256()
        n = [0]

        def sink(d):
            n[0] += len(d)
            h.update(d)
        r = self.read_response(sink=sink)
        return r, n[0], h.hexdigest()

    def read_to_eof(self):
        """Every byte until the peer closes (what is buffered first)."""
        out = []
        while True:
            d = self.recv_some()
            if not d:
                return b"".join(out)
            out.append(d)

    def _fill(self):
        try:
            d = self.sock.recv(262144)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            raise EOFError("connection closed by peer")
        self.buf += d

    def read_until(self, marker):
        while marker not in self.buf:
            self._fill()
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self):
        """Reads one response head -> Response without body."""
        head = self.read_until(b"\r\n\r\n")
        r = Response()
        r.raw = head
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        r.version = parts[0]
        r.status = int(parts[1])
        r.reason = parts[2] if len(parts) > 2 else ""
        for line in lines[1:]:
            k, _, v = line.partition(":")
            r.headers.append((k, v.strip()))
        return r

    def read_response(self, head=False, skip_1xx=True, sink=None):
        """Reads one whole response.  head=True: the request was HEAD (no body).
        1xx interim responses are skipped unless skip_1xx is False.  sink: a
        callable receiving body pieces instead of keeping them in .body."""
        while True:
            r = self.read_head()
            if not (100 <= r.status < 200 and r.status != 101 and skip_1xx):
                break
        if head or r.status in (204, 304) or 100 <= r.status < 200:
            return r
        te = (r.header("transfer-encoding") or "").lower()
        cl = r.header("content-length")
        body = []
        keep = sink is None

        def take(d):
            if keep:
                body.append(d)
            else:
                sink(d)
            r.raw += d if keep else b""

        if "chunked" in te:
            r.framing = "chunked"
            while True:
                line = self.read_until(b"\r\n")
                r.raw += line
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = self.read_until(b"\r\n")
                        r.raw += t
                        if t == b"\r\n":
                            break
                    break
                left = size
                while left:
                    if not self.buf:
                        self._fill()
                    piece = self.buf[:left]
                    self.buf = self.buf[len(piece):]
                    take(piece)
                    left -= len(piece)
                r.raw += self.read_exact(2)
        elif cl is not None:
            r.framing = "length"
            left = int(cl)
            while left:
                if not self.buf:
                    self._fill()
                piece = self.buf[:left]
                self.buf = self.buf[len(piece):]
                take(piece)
                left -= len(piece)
        else:
            r.framing = "close"
            while True:
                if self.buf:
                    take(self.buf)
                    self.buf = b""
                try:
                    self._fill()
                except EOFError:
                    break
        r.body = b"".join(body)
        return r

    def is_closed(self, timeout=2):
        """True when the peer closes (EOF or reset) within timeout with no data
        pending; False if the connection stays open.  Raises if data arrives."""
        if self.eof:
            return True
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(self.timeout)
        if d:
            self.buf += d
            raise AssertionError("unexpected data while waiting for close: %r" % d[:200])
        self.eof = True
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def parse_responses(data, head=False):
    """Splits a byte string holding whole responses into Response objects."""
    out = []

    class _Fake(RawConn):
        def __init__(self, d):
            self.buf = d
            self.eof = False

        def _fill(self):
            self.eof = True
            raise EOFError("end of data")

    c = _Fake(data)
    while c.buf:
        try:
            out.append(c.read_response(head=head))
        except EOFError:
            break
    return out
