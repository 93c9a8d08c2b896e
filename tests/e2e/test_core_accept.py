"""Deferred accept (issue 2): the listener hands tollgate a connection once
its request has begun to arrive (TCP_DEFER_ACCEPT, --defer-accept), and
tollgate reads it at once.  A client that connects and stays silent waits in
the kernel, costing tollgate nothing, and is then cut by the header timeout
as before."""

import time

from tglib import *

ROUTE = "app.test"


def _accepted(tg):
    return tg.metrics()["tollgate_connections_accepted_total"]


def _settled(tg):
    """The accepted count once the harness's one start-up probe (a connect
    and close, which the kernel hands over on its FIN) has come and gone."""
    def probe_done():
        m = tg.metrics()
        return m["tollgate_connections_accepted_total"] >= 1 and m["tollgate_connections_active"] == 0
    wait_until(probe_done, timeout=scale(5), what="the start-up probe accepted and closed")
    return _accepted(tg)


def test_silent_connection_is_held_by_the_kernel_until_its_request_arrives():
    with Backend("b1") as b, Tollgate(routes=[ROUTE + "=" + b.addr], args=["--defer-accept", "5"]) as tg:
        before = _settled(tg)
        with RawConn(tg.port, timeout=scale(10)) as c:
            # The kernel's deferral cannot end before 5 s (its first SYN-ACK
            # retransmission is 1 s away): tollgate has not seen the socket.
            time.sleep(1.5)
            assert _accepted(tg) == before, "a silent connection was accepted during --defer-accept 5"
            c.send(b"GET /echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            data = c.read_to_eof()
        assert data.startswith(b"HTTP/1.1 200 "), data[:200]
        assert _accepted(tg) == before + 1


def test_accept_is_immediate_with_defer_accept_off():
    # "--defer-accept 60" first: were the final 0 not honoured, the silent
    # connection would wait 60 s in the kernel, past the deadline below.
    with Backend("b1") as b, Tollgate(routes=[ROUTE + "=" + b.addr],
                                      args=["--defer-accept", "60", "--defer-accept", "0"]) as tg:
        before = _settled(tg)
        with RawConn(tg.port, timeout=scale(10)):
            deadline = time.monotonic() + scale(3)
            while _accepted(tg) == before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _accepted(tg) == before + 1, "--defer-accept 0: a silent connection was not accepted"


def _wait_accepted(tg, count):
    wait_until(lambda: _accepted(tg) >= count, timeout=scale(5), interval=0.01,
               what="the connection accepted after the deferral")


def test_silent_client_is_cut_by_the_header_timeout_counted_from_accept():
    # Default deferral (about 1 s), then accept with nothing to read; the
    # 1 s header timeout runs from there: neither earlier nor never.
    with Backend("b1") as b, Tollgate(routes=[ROUTE + "=" + b.addr],
                                      args=["--client-header-timeout", "1"]) as tg:
        before = _settled(tg)
        with RawConn(tg.port, timeout=scale(8)) as c:
            _wait_accepted(tg, before + 1)
            t_accept = time.monotonic()
            data = c.read_to_eof()
        took = time.monotonic() - t_accept
        assert took >= 0.8, "closed %.2fs after accept, before the 1 s header timeout" % took
        assert took < scale(4), "closed %.1fs after accept" % took
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert _accepted(tg) == before + 1


def test_client_accepted_without_data_is_read_when_it_speaks():
    # Accepted when the deferral ran out (the read at accept found nothing):
    # the connection still waits for its request and answers it.
    with Backend("b1") as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        before = _settled(tg)
        with RawConn(tg.port, timeout=scale(10)) as c:
            _wait_accepted(tg, before + 1)
            time.sleep(0.3)
            c.send(b"GET /echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            data = c.read_to_eof()
        assert data.startswith(b"HTTP/1.1 200 "), data[:200]
        assert b'"target": "/echo"' in data, data[-400:]


def test_request_in_the_first_packet_is_answered_on_every_new_connection():
    # The read at accept must not lose or repeat a byte: many short
    # connections, each request in one send, each answered exactly once.
    with Backend("b1") as b, Tollgate(routes=[ROUTE + "=" + b.addr]) as tg:
        for i in range(50):
            with RawConn(tg.port, timeout=scale(10)) as c:
                c.send(b"GET /echo?n=%d HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n" % i)
                data = c.read_to_eof()
            assert data.startswith(b"HTTP/1.1 200 "), data[:200]
            assert data.count(b"HTTP/1.1 ") == 1, data[:400]
            assert b'/echo?n=%d"' % i in data, data[-400:]
