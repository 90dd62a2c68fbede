"""The registry database goes away mid-load and comes back: 503 with a reason meanwhile (never a
500, never an answer without a registry check), and service again once it returns, with no
restart. PostgreSQL behind a TCP proxy that the test stops and starts."""

import contextlib
import socket
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from activedaemon.serve.app import create_app
from tests.test_serve import ADMIN, ADMIN_KEY, make_gate, post_images


class TcpProxy:
    """Forwards 127.0.0.1:port to an upstream address until stopped; restartable on the port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.port = upstream, 0
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port, self._listener = listener.getsockname()[1], listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """The database is gone: refuse new connections, cut the open ones."""
        with contextlib.suppress(OSError):  # wakes the accept() (close alone would not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_registry_outage_is_503_and_service_resumes(db_url, tiny_protected, generator,
                                                    test_images):  # fmt: skip
    url = make_url(db_url)
    proxy = TcpProxy((url.host, url.port or 5432))
    proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    gate = make_gate(proxied, tiny_protected, generator)
    x = test_images[0][:2]
    statuses: dict[str, list[int]] = {"before": [], "outage": [], "after": []}
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        uid = client.post("/v1/users", json={}, headers=ADMIN).json()["user_id"]
        authorized = generator.embed(x, uid)
        for _ in range(3):
            statuses["before"].append(post_images(client, authorized).status_code)
        proxy.stop()
        for _ in range(3):
            r = post_images(client, authorized)
            statuses["outage"].append(r.status_code)
            assert r.json().get("error") == "registry_unavailable", r.text
            assert r.headers["retry-after"]
            assert "psycopg" not in r.text and "5432" not in r.text
            # A clean query needs no registry lookup to be refused, but its refusal cannot be
            # audited: it gets 503 too (no answer of any kind leaves unaudited).
            statuses["outage"].append(post_images(client, x).status_code)
        r = client.get("/v1/users", headers=ADMIN)
        assert (r.status_code, r.json()["error"]) == (503, "registry_unavailable")
        proxy.start()  # the database is back, on the same address: no restart of the service
        for _ in range(3):
            statuses["after"].append(post_images(client, authorized).status_code)
        metrics = client.get("/metrics", headers=ADMIN).text
    assert statuses == {"before": [200] * 3, "outage": [503] * 6, "after": [200] * 3}, statuses
    errors = [
        line
        for line in metrics.splitlines()
        if line.startswith("activedaemon_registry_errors_total")
    ]
    assert float(errors[0].split()[1]) >= 7, errors
    # Answered queries were all audited; refusals during the outage could not be (logged).
    usage = gate.registry.usage(uid)
    assert usage == {"ok": 12}, usage
    proxy.stop()
    gate.registry.close()
