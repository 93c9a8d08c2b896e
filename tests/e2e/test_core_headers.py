"""Header handling (issue 2, RFC 9110 §7.6): hop-by-hop fields are removed in
both directions, X-Forwarded-For/-Proto/-Host and Forwarded (RFC 7239) are
set, Host is kept as the client sent it."""

import json
import socket
import time

from tglib import *

ROUTE = "app.test"


def _tg(b, **kw):
    return Tollgate(routes=[ROUTE + "=" + b.addr], **kw)


def echo(port, headers, host="app.test"):
    with RawConn(port) as c:
        req = "GET /echo HTTP/1.1\r\nHost: %s\r\n" % host
        req += "".join("%s: %s\r\n" % hv for hv in headers) + "\r\n"
        c.send(req)
        r = c.read_response()
        assert r.status == 200, r
        doc = json.loads(r.body)
        return doc, {k.lower(): v for k, v in doc["headers"]}, doc["headers"]


def test_request_hop_by_hop_removed():
    with Backend("b1") as b, _tg(b) as tg:
        _, h, _ = echo(tg.port, [("Connection", "keep-alive, X-Private"), ("Keep-Alive", "timeout=5"),
                                 ("X-Private", "secret"), ("Proxy-Connection", "keep-alive"),
                                 ("TE", "trailers"), ("Trailer", "X-T"),
                                 ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                                 ("X-End-To-End", "kept")])
        for name in ("keep-alive", "x-private", "proxy-connection", "te", "trailer",
                     "proxy-authorization", "upgrade"):
            assert name not in h, "%s forwarded to the backend: %s" % (name, h)
        # tollgate may send its own Connection header, but not the client's tokens
        assert "x-private" not in h.get("connection", "").lower()
        assert h["x-end-to-end"] == "kept"


def test_response_hop_by_hop_removed():
    with Backend("b1") as b, _tg(b) as tg:
        q = "h=Connection:X-Secret&h=X-Secret:1&h=Keep-Alive:timeout%3D99&h=Proxy-Connection:keep-alive" \
            "&h=Trailer:X-T&h=Upgrade:h2c&h=X-End-To-End:kept"
        with RawConn(tg.port) as c:
            c.send("GET /bytes/10?%s HTTP/1.1\r\nHost: app.test\r\n\r\n" % q)
            r = c.read_response()
            names = {k.lower() for k, _ in r.headers}
            for name in ("x-secret", "keep-alive", "proxy-connection", "trailer", "upgrade"):
                assert name not in names, "%s forwarded to the client: %s" % (name, r.headers)
            assert "x-secret" not in (r.header("connection") or "").lower()
            assert r.header("x-end-to-end") == "kept"
            assert r.body == pattern(10)


def test_forwarded_headers_set():
    with Backend("b1") as b, _tg(b) as tg:
        doc, h, _ = echo(tg.port, [])
        assert h["x-forwarded-for"] == "127.0.0.1", h
        assert h["x-forwarded-proto"] == "http", h
        assert h["x-forwarded-host"] == "app.test", h
        fwd = h["forwarded"].lower()
        assert "for=127.0.0.1" in fwd or 'for="127.0.0.1"' in fwd, fwd
        assert "proto=http" in fwd, fwd
        assert "host=app.test" in fwd or 'host="app.test"' in fwd, fwd


def test_forwarded_for_formats_every_ipv4_address_form():
    # one-, two- and three-digit octets, zeros included (the proxy formats
    # IPv4 addresses itself); loopback is all of 127.0.0.0/8
    with Backend("b1") as b, _tg(b) as tg:
        for src in ("127.0.0.1", "127.10.200.3", "127.255.0.99", "127.1.100.250"):
            s = socket.socket()
            s.bind((src, 0))
            s.connect(("127.0.0.1", tg.port))
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                piece = s.recv(65536)
                if not piece:
                    break
                data += piece
            s.close()
            doc = json.loads(data.split(b"\r\n\r\n", 1)[1])
            h = {k.lower(): v for k, v in doc["headers"]}
            assert h["x-forwarded-for"] == src, (src, h)
            assert ("for=%s;" % src) in h["forwarded"], (src, h["forwarded"])


def test_x_forwarded_for_ends_with_client():
    # appending (nginx's $proxy_add_x_forwarded_for) or replacing are both
    # fine at the edge; the last element must be the real peer
    with Backend("b1") as b, _tg(b) as tg:
        _, h, pairs = echo(tg.port, [("X-Forwarded-For", "203.0.113.7")])
        xff = ", ".join(v for k, v in pairs if k.lower() == "x-forwarded-for")
        parts = [p.strip() for p in xff.split(",")]
        assert parts in (["203.0.113.7", "127.0.0.1"], ["127.0.0.1"]), xff


def test_forwarded_ends_with_client():
    with Backend("b1") as b, _tg(b) as tg:
        _, h, pairs = echo(tg.port, [("Forwarded", "for=203.0.113.7;proto=https")])
        fwd = ", ".join(v for k, v in pairs if k.lower() == "forwarded")
        parts = [p.strip() for p in fwd.split(",")]
        assert "127.0.0.1" in parts[-1] and "proto=http" in parts[-1].lower(), fwd
        assert len(parts) <= 2, fwd


def test_client_cannot_spoof_proto_and_host():
    with Backend("b1") as b, _tg(b) as tg:
        _, h, pairs = echo(tg.port, [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.test")])
        protos = [v for k, v in pairs if k.lower() == "x-forwarded-proto"]
        hosts = [v for k, v in pairs if k.lower() == "x-forwarded-host"]
        assert protos == ["http"], protos
        assert hosts == ["app.test"], hosts


def test_host_kept():
    with Backend("b1") as b, _tg(b) as tg:
        for host in ("app.test", "APP.Test", "app.test:%d" % tg.port):
            _, _, pairs = echo(tg.port, [], host=host)
            hosts = [v for k, v in pairs if k.lower() == "host"]
            assert hosts == [host], (host, hosts)


def test_end_to_end_headers_kept_in_order():
    with Backend("b1") as b, _tg(b) as tg:
        sent = [("X-A", "1"), ("X-B", "two words"), ("X-A", "3"), ("Cookie", "a=b; c=d"),
                ("User-Agent", "tg-test/1.0"), ("Accept", "*/*"), ("X-Empty", "")]
        _, _, pairs = echo(tg.port, sent)
        got = [(k, v) for k, v in pairs if k.lower() in ("x-a", "x-b", "cookie", "user-agent", "accept",
                                                         "x-empty")]
        assert [(k.lower(), v) for k, v in got] == [(k.lower(), v) for k, v in sent], got


def test_response_headers_kept():
    with Backend("b1") as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /bytes/1?h=Set-Cookie:a%3D1&h=Set-Cookie:b%3D2&h=Cache-Control:no-store"
                   b" HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            assert r.header_all("set-cookie") == ["a=1", "b=2"], r.headers
            assert r.header("cache-control") == "no-store"
            assert r.header("x-backend") == "b1"


def _backend_sees(request, reply=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"):
    """Sends one request through tollgate to a raw backend; returns (the
    client's response, every byte the backend received)."""
    import time
    got = []

    def serve(s, n):
        data = b""
        s.settimeout(0.5)
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
                if b"\r\n\r\n" in data and b"HTTP/1.1 200" not in b"".join(got):
                    got.append(b"HTTP/1.1 200")
                    s.sendall(reply)
        except OSError:
            pass
        got.append(data)
        return False
    with RawBackend(serve) as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(request)
            r = c.read_response()
        wait_until(lambda: len(got) >= 2, 3, "the backend's bytes")
    return r, got[-1]


def test_connection_listing_content_length_cannot_smuggle_a_request():
    """RFC 9110 §7.6.1 removes what Connection lists, but never the framing:
    the body of a POST whose Connection lists Content-Length reaches the
    backend as that POST's body (with its Content-Length), not as a second
    request."""
    body = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    r, seen = _backend_sees(b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n"
                            b"Connection: content-length, host\r\n\r\n" % len(body) + body)
    assert r.status == 200, r
    head, _, rest = seen.partition(b"\r\n\r\n")
    lines = [l.lower() for l in head.split(b"\r\n")]
    assert b"content-length: %d" % len(body) in lines, head
    assert b"host: app.test" in lines, head
    assert rest == body, seen


def test_a_field_named_close_is_removed_when_listed():
    r, seen = _backend_sees(b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nClose: yes\r\n"
                            b"X-Kept: 1\r\n\r\n")
    assert r.status == 200, r
    head = seen.split(b"\r\n\r\n")[0].lower()
    assert b"\r\nclose:" not in head and b"\r\nx-kept: 1" in head, head


def test_a_response_without_date_gets_one_and_a_backends_date_is_kept():
    """RFC 9110 §6.6.1: a recipient with a clock that forwards a response
    without Date appends one (nginx sends its own always); one the backend
    sent goes through as it is, once."""
    import email.utils
    r, _ = _backend_sees(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    dates = r.header_all("date")
    assert len(dates) == 1, r.headers
    when = email.utils.parsedate_to_datetime(dates[0]).timestamp()
    assert abs(when - time.time()) < 60 and dates[0].endswith(" GMT"), dates
    old = b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    r, _ = _backend_sees(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n",
                         reply=b"HTTP/1.1 200 OK\r\n" + old + b"Content-Length: 2\r\n\r\nok")
    assert r.header_all("date") == ["Sun, 06 Nov 1994 08:49:37 GMT"], r.headers


def test_an_interim_response_loses_its_content_length():
    """RFC 9110 §8.6: a 1xx must not carry Content-Length; forwarded, one
    made nginx 1.22 take the final head's first bytes for a body."""
    with one_shot_backend(b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\nLink: </a>\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", hold=0.2) as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            interim = c.read_response(skip_1xx=False)
            assert interim.status == 103 and interim.header("link") == "</a>", interim
            assert interim.header("content-length") is None, interim.headers
            final = c.read_response()
            assert final.status == 200 and final.body == b"ok", final


def test_a_switching_protocols_answer_loses_its_content_length():
    """A 101 has no content (RFC 9110 §8.6): a Content-Length on it would
    tell the client the tunnel's first bytes are a body."""
    with one_shot_backend(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Content-Length: 4\r\n\r\nping", hold=0.3) as b, _tg(b) as tg:
        with RawConn(tg.port) as c:
            c.send(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            r = c.read_head()
            assert r.status == 101 and r.header("content-length") is None, r.headers
            assert r.header("date") is None, r.headers
            assert c.read_exact(4) == b"ping"
