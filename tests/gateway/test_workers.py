"""`serve --workers N`: the sockets the workers listen on."""

import select
import socket

from swiftpipe.gateway import workers


def test_workers_get_one_socket_each_on_one_port_and_connections_spread_over_them():
    sockets = workers.bind("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(sockets) == 3 and len(ports) == 1 and 0 not in ports
        port = ports.pop()
        got = [0, 0, 0]
        clients = []
        for _ in range(48):  # each new connection lands on one socket, by a hash of its source port
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            ready, _, _ = select.select(sockets, [], [], 10)
            for s in ready:
                conn, _ = s.accept()
                conn.close()
                got[sockets.index(s)] += 1
        for c in clients:
            c.close()
        assert sum(got) == 48
        assert sum(1 for n in got if n) >= 2, f"every connection went to one socket: {got}"
    finally:
        for s in sockets:
            s.close()


def test_a_taken_port_fails_to_bind_and_leaves_nothing_open():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        try:
            workers.bind("127.0.0.1", port, 2)
        except OSError:
            pass
        else:
            raise AssertionError("bound a port another socket listens on without SO_REUSEPORT")
    finally:
        taken.close()
