"""Large bodies (issue 2): 100 MB uploads and downloads arrive intact (sha256),
1 GiB each way leaves the proxy's RSS flat (growth < 50 MB), and a client that
stops reading makes the proxy hold only a bounded amount (backpressure)."""

import json
import socket
import time

from tglib import *

TIMEOUT = 400
ROUTE = "app.test"
MB = 1000 * 1000
GIB = 1 << 30
RSS_LIMIT_KB = 50 * 1024


def _tg(b, **kw):
    return Tollgate(routes=[ROUTE + "=" + b.addr], **kw)


def _warm(tg):
    # one request of each kind so that pools, buffers and threads exist before the baseline
    for _ in range(2):
        assert http(tg.port, "GET", "/bytes/300000", ROUTE)[0] == 200
        assert http(tg.port, "POST", "/upload", ROUTE, body=b"w" * 300000)[0] == 200
    time.sleep(0.2)


def download(port, n, chunked=False, check_sha=True):
    import hashlib
    h = hashlib.sha256()
    count = [0]

    def sink(d):
        count[0] += len(d)
        if check_sha:
            h.update(d)

    with RawConn(port, timeout=30) as c:
        path = "/chunked/%d?chunks=%d" % (n, max(1, n // 65536)) if chunked else "/bytes/%d" % n
        c.send("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, ROUTE))
        r = c.read_response(sink=sink)
        assert r.status == 200
    assert count[0] == n, "got %d of %d bytes" % (count[0], n)
    if check_sha:
        assert h.hexdigest() == pattern_sha256(n), "body differs from what the backend sent"


def upload(port, n, chunked=False):
    """Streams n pattern bytes as a request body; returns the backend's JSON."""
    block = pattern(251 * 1044)     # 262044 bytes: a whole number of periods
    with RawConn(port, timeout=60) as c:
        if chunked:
            c.send("POST /upload HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % ROUTE)
        else:
            c.send("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (ROUTE, n))
        left = n
        while left:
            piece = block[:min(left, len(block))]
            if chunked:
                c.sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            else:
                c.sock.sendall(piece)
            left -= len(piece)
        if chunked:
            c.sock.sendall(b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        return json.loads(r.body)


def test_download_100mb_sha256():
    with Backend("b1") as b, _tg(b) as tg:
        download(tg.port, 100 * MB)


def test_download_100mb_chunked_sha256():
    with Backend("b1") as b, _tg(b) as tg:
        download(tg.port, 100 * MB, chunked=True)


def test_upload_100mb_sha256():
    with Backend("b1") as b, _tg(b) as tg:
        doc = upload(tg.port, 100 * MB)
        assert doc["body_length"] == 100 * MB
        assert doc["body_sha256"] == pattern_sha256(100 * MB)


def test_upload_100mb_chunked_sha256():
    with Backend("b1") as b, _tg(b) as tg:
        doc = upload(tg.port, 100 * MB, chunked=True)
        assert doc["body_length"] == 100 * MB
        assert doc["body_sha256"] == pattern_sha256(100 * MB)


def test_download_1gib_rss_flat():
    with Backend("b1") as b, _tg(b) as tg:
        _warm(tg)
        base = tg.rss_kb()
        with RssSampler(tg.pid) as rss:
            download(tg.port, GIB, check_sha=False)
        growth = rss.max_kb - base
        print("RSS base %d KiB, max %d KiB, growth %d KiB" % (base, rss.max_kb, growth))
        if not SANITIZED:
            assert growth < RSS_LIMIT_KB, "RSS grew by %d KiB during a 1 GiB download" % growth


def test_upload_1gib_rss_flat():
    with Backend("b1") as b, _tg(b) as tg:
        _warm(tg)
        base = tg.rss_kb()
        with RssSampler(tg.pid) as rss:
            doc = upload(tg.port, GIB)
        assert doc["body_length"] == GIB
        growth = rss.max_kb - base
        print("RSS base %d KiB, max %d KiB, growth %d KiB" % (base, rss.max_kb, growth))
        if not SANITIZED:
            assert growth < RSS_LIMIT_KB, "RSS grew by %d KiB during a 1 GiB upload" % growth


def test_slow_reader_bounded_buffering():
    """A client that stops reading: the proxy must stop reading the backend
    (watermarks) instead of buffering the response."""
    n = 200 * MB
    with Backend("b1") as b, _tg(b) as tg:
        _warm(tg)
        base = tg.rss_kb()
        with RawConn(tg.port, timeout=30) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.send("GET /bytes/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (n, ROUTE))
            with RssSampler(tg.pid) as rss:
                time.sleep(3)           # read nothing
            growth = rss.max_kb - base
            print("stalled reader: RSS base %d KiB, max %d KiB" % (base, rss.max_kb))
            if not SANITIZED:
                assert growth < 20 * 1024, "proxy buffered %d KiB for a stalled reader" % growth
            # then the whole body still arrives intact
            r, count, sha = c.read_response_sha()
            assert r.status == 200 and count == n
            assert sha == pattern_sha256(n)


def test_stalled_backend_upload_bounded_buffering():
    """An upload to a backend that never reads must not pile up in the proxy:
    the proxy stops reading the client once its buffer is full."""
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    accepted = []

    def accept():
        try:
            s, _ = srv.accept()
            accepted.append(s)      # never read
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    sent = [0]
    try:
        with Tollgate(routes=["app.test=127.0.0.1:%d" % srv.getsockname()[1]]) as tg:
            time.sleep(0.2)
            base = tg.rss_kb()
            c = socket.create_connection(("127.0.0.1", tg.port))
            c.sendall(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % (100 * MB))
            c.settimeout(2)
            block = b"u" * 65536
            with RssSampler(tg.pid) as rss:
                try:
                    while sent[0] < 100 * MB:
                        c.sendall(block)
                        sent[0] += len(block)
                except (socket.timeout, OSError):
                    pass
                time.sleep(1)
            growth = rss.max_kb - base
            print("stalled backend: %d bytes accepted from the client, RSS growth %d KiB" % (sent[0], growth))
            assert sent[0] < 30 * MB, "the proxy took %d bytes the backend never read" % sent[0]
            if not SANITIZED:
                assert growth < 20 * 1024, "proxy buffered %d KiB for a stalled backend" % growth
            c.close()
            for s in accepted:
                s.close()
            # the proxy is fine afterwards
            assert tg.admin("/healthz")[0] == 200
    finally:
        srv.close()


def _bytes_after_the_response(splice_min_body):
    """A backend sends a complete 6 MB Content-Length response and then goes
    on sending bytes without end, to a client that reads nothing.  Those bytes
    answer nothing: they only mean that the backend connection cannot be
    reused.  The proxy must not keep reading them into memory (it drops the
    connection, or stops reading it): the backend's sending stops by itself
    (connection closed, or stalled on full socket buffers) long before it
    has pushed 64 MB, the proxy's RSS stays within its buffers, and the
    client then gets the whole response, and the next one on its connection.
    --buffer-size 16 MiB lets the whole response sit queued for the client
    (kernel socket buffers cannot hold it all), which is when the backend's
    reads used to go on without bound."""
    import threading
    n = 6 * MB
    junk_state = {}
    stop = threading.Event()

    def serve(s, i):
        head = read_request_head(s)
        if not head.startswith(b"GET /junk"):
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return False
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + pattern(n))
        junk = b"j" * 65536
        sent = 0
        s.settimeout(2)
        end = "stopped by the test"
        try:
            while not stop.is_set():
                s.sendall(junk)
                sent += len(junk)
                junk_state["sent"] = sent
        except socket.timeout:
            end = "stalled"
        except OSError:
            end = "closed"
        junk_state["sent"] = sent
        junk_state["end"] = end
        return False

    args = ["--splice-min-body", str(splice_min_body), "--buffer-size", str(16 << 20)]
    with RawBackend(serve) as b, Tollgate(routes=[ROUTE + "=" + b.addr], args=args, workers=1) as tg:
        for _ in range(2):
            assert http(tg.port, "GET", "/warm", ROUTE)[2] == b"ok"
        time.sleep(0.2)
        base = tg.rss_kb()
        with RawConn(tg.port, timeout=30) as c:
            try:
                c.send("GET /junk HTTP/1.1\r\nHost: %s\r\n\r\n" % ROUTE)
                with RssSampler(tg.pid) as rss:
                    ended = True
                    try:
                        wait_until(lambda: "end" in junk_state or junk_state.get("sent", 0) > 64 * MB,
                                   scale(10), "the backend's sending to end")
                    except AssertionError:
                        ended = False
                    time.sleep(0.5)
            finally:
                stop.set()
            wait_until(lambda: "end" in junk_state, scale(10), "the backend thread to finish")
            growth = rss.max_kb - base
            print("splice-min-body %d: backend pushed %d bytes past the response (%s); RSS base %d KiB, growth %d KiB"
                  % (splice_min_body, junk_state["sent"], junk_state["end"], base, growth))
            assert ended and junk_state["sent"] <= 64 * MB, \
                "the proxy read %d bytes past the response from the backend and went on" % junk_state["sent"]
            if not SANITIZED:
                assert growth < 24 * 1024, "proxy held %d KiB for a 6 MB response" % growth
            # the client reads: the response is whole, the connection goes on
            r, count, sha = c.read_response_sha()
            assert r.status == 200 and count == n and sha == pattern_sha256(n), (r.status, count)
            c.send("GET /after HTTP/1.1\r\nHost: %s\r\n\r\n" % ROUTE)
            r = c.read_response()
            assert r.status == 200 and r.body == b"ok", r


def test_bytes_after_a_copied_response_are_not_buffered_for_a_slow_reader():
    _bytes_after_the_response(0)


def test_bytes_after_a_spliced_response_are_not_buffered_for_a_slow_reader():
    _bytes_after_the_response(16384)
