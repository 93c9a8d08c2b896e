#!/usr/bin/python3
"""runner.py: runs tollgate's end-to-end tests.

    /usr/bin/python3 tests/e2e/runner.py [test_core_proxy.py ...] [-v]

Finds tests/e2e/test_*.py (or the files named), and every top-level function
named test_* in them (found by parsing, not importing, so a broken module is
reported as a failure instead of stopping the run).  Each test runs in its own
process and process group, sequentially; after TIMEOUT seconds (default 120, a
module may set `TIMEOUT = N`) the whole group is killed, and after every test
any process left in the group is killed too, so nothing leaks between tests.

Prints "PASS module.test (1.2s)", "FAIL module.test: reason" (followed by the
tail of the test's output) or "SKIP module.test: reason", and as its last line
"N passed, M failed".  Exit status 1 when anything failed.

Environment: TG_TEST_FILTER=substring selects tests whose "module.test" name
contains it; TG_TEST_VERBOSE=1 (or -v) prints every test's output.
"""

import ast
import os
import signal
import subprocess
import sys
import tempfile
import time

PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TIMEOUT = 120
SKIP_CODE = 77

CHILD = r"""
import importlib, os, sys, traceback
sys.path.insert(0, %(dir)r)
reason_file = %(reason)r
def _reason(text):
    with open(reason_file, "w") as f:
        f.write(text)
try:
    import tglib
    mod = importlib.import_module(%(mod)r)
    getattr(mod, %(fn)r)()
except BaseException as e:
    skip = type(e).__name__ == "Skip"
    if not skip:
        traceback.print_exc()
    msg = str(e).strip().splitlines()
    _reason("%%s: %%s" %% (type(e).__name__, msg[0] if msg else ""))
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(%(skip)d if skip else 1)
sys.stdout.flush(); sys.stderr.flush()
"""


def discover(paths):
    """Returns [(module_name, path, [test functions], timeout)]."""
    out = []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            with open(path) as f:
                tree = ast.parse(f.read(), path)
        except (OSError, SyntaxError) as e:
            out.append((name, path, None, str(e)))
            continue
        tests = []
        timeout = DEFAULT_TIMEOUT
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                tests.append(node.name)
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TIMEOUT"
                                                      for t in node.targets):
                try:
                    timeout = float(ast.literal_eval(node.value))
                except ValueError:
                    pass
        out.append((name, path, tests, timeout))
    return out


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGCONT)
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_one(mod, fn, moddir, timeout, verbose):
    fd, reason_path = tempfile.mkstemp(prefix="tg-reason-")
    os.close(fd)
    code = CHILD % {"dir": moddir, "reason": reason_path, "mod": mod, "fn": fn, "skip": SKIP_CODE}
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen([PYTHON, "-c", code], stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, cwd=moddir, env=env, start_new_session=True)
        timed_out = False
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(p.pid)
            rc = p.wait()
        kill_group(p.pid)   # anything the test left behind
        elapsed = time.monotonic() - t0
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    try:
        with open(reason_path) as f:
            reason = f.read().strip()
    finally:
        os.unlink(reason_path)
    if timed_out:
        return "FAIL", "timed out after %gs" % timeout, output, elapsed
    if rc == 0:
        return "PASS", "", output, elapsed
    if rc == SKIP_CODE:
        return "SKIP", reason.split(": ", 1)[-1], output, elapsed
    return "FAIL", reason or "exit status %d" % rc, output, elapsed


def main(argv):
    verbose = bool(os.environ.get("TG_TEST_VERBOSE"))
    files = []
    for a in argv:
        if a in ("-v", "--verbose"):
            verbose = True
            continue
        if not os.path.exists(a) and os.path.exists(os.path.join(HERE, a)):
            a = os.path.join(HERE, a)
        if not os.path.exists(a) and os.path.exists(os.path.join(HERE, a + ".py")):
            a = os.path.join(HERE, a + ".py")
        files.append(os.path.abspath(a))
    if not files:
        files = sorted(os.path.join(HERE, f) for f in os.listdir(HERE)
                       if f.startswith("test_") and f.endswith(".py"))
    filt = os.environ.get("TG_TEST_FILTER", "")
    passed = failed = skipped = 0
    for mod, path, tests, timeout in discover(files):
        if tests is None:
            if filt and filt not in mod:
                continue
            print("FAIL %s: cannot parse: %s" % (mod, timeout), flush=True)
            failed += 1
            continue
        for fn in tests:
            full = "%s.%s" % (mod, fn)
            if filt and filt not in full:
                continue
            status, reason, output, elapsed = run_one(mod, fn, os.path.dirname(path), timeout, verbose)
            if status == "PASS":
                passed += 1
                print("PASS %s (%.1fs)" % (full, elapsed), flush=True)
            elif status == "SKIP":
                skipped += 1
                print("SKIP %s: %s" % (full, reason), flush=True)
            else:
                failed += 1
                print("FAIL %s: %s (%.1fs)" % (full, reason, elapsed), flush=True)
            if verbose or status == "FAIL":
                tail = output.rstrip().splitlines()[-60:]
                for line in tail:
                    print("    | " + line)
                sys.stdout.flush()
    if skipped:
        print("(%d skipped)" % skipped)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
