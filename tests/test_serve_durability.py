"""The real server (uvicorn in a subprocess, SQLite registry): kill -9 while users are being added,
restart, and every user that got a 2xx is there. Then the owner and user CLIs against it."""

import json
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from activedaemon.cli import main
from activedaemon.data import load_dataset
from activedaemon.imageio import write_png

from .conftest import free_port, start_server

ADMIN_KEY = "durability-admin-key-0123456789"


def test_kill_9_keeps_every_acknowledged_user(tiny_protected, tmp_path, monkeypatch, capsys):
    db, log_path = tmp_path / "registry.db", tmp_path / "server.log"
    port = free_port()
    with open(log_path, "wb") as log:
        proc, url = start_server(tiny_protected, db, port, log, ADMIN_KEY)
        acked: list[str] = []
        stop = threading.Event()

        def add_users() -> None:
            with httpx.Client(base_url=url, headers={"X-Admin-Key": ADMIN_KEY}, timeout=5) as c:
                while not stop.is_set():
                    try:
                        r = c.post("/v1/users", json={"name": f"user {len(acked)}"})
                    except httpx.TransportError:
                        return  # the server is gone
                    if r.status_code == 201:
                        acked.append(r.json()["user_id"])

        adder = threading.Thread(target=add_users)
        adder.start()
        while len(acked) < 40 and adder.is_alive():
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
        proc.wait(timeout=30)
        stop.set()
        adder.join(timeout=30)
        assert len(acked) >= 40
        proc, url = start_server(tiny_protected, db, port, log, ADMIN_KEY)
    try:
        admin = {"X-Admin-Key": ADMIN_KEY}
        present = {
            u["user_id"] for u in httpx.get(f"{url}/v1/users", headers=admin).json()["users"]
        }
        missing = set(acked) - present
        assert not missing, f"{len(missing)} acknowledged users lost: {sorted(missing)[:5]}"

        # The CLIs against the live server: owner adds and revokes, user queries.
        monkeypatch.setenv("ACTIVEDAEMON_ADMIN_KEY", ADMIN_KEY)
        assert main(["users", "add", "--user", "cliuser1", "--name", "Cli", "--url", url]) == 0
        assert main(["users", "list", "--url", url]) == 0
        assert "cliuser1\tactive" in capsys.readouterr().out
        shown = tmp_path / "shown.json"  # --json PATH: also written to PATH; '-': only the JSON
        assert main(["users", "show", "cliuser1", "--url", url, "--json", str(shown)]) == 0
        assert json.loads(shown.read_text())["user_id"] == "cliuser1"
        capsys.readouterr()
        assert main(["users", "list", "--url", url, "--json", "-"]) == 0
        assert "cliuser1" in {u["user_id"] for u in json.loads(capsys.readouterr().out)}
        data = load_dataset("fashion-mnist", size=32, channels=3, limit_train=0, limit_test=2)
        paths = [
            str(write_png(img, tmp_path / f"q{i}.png")) for i, img in enumerate(data.test.images)
        ]
        query = [
            "query",
            "--url",
            url,
            "--user",
            "cliuser1",
            "--encoder",
            "fashion-mnist-32",
            *paths,
        ]
        assert main(query) == 0
        out = capsys.readouterr().out.splitlines()
        assert [line.split("\t")[0] for line in out] == paths
        assert main([*query, "--json", "-"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == len(paths)
        assert main(["users", "revoke", "cliuser1", "--url", url]) == 0
        assert main(query) == 1  # denied, with the (one, generic) reason on stderr
        assert "denied: 403 forbidden" in capsys.readouterr().err
        monkeypatch.setenv("ACTIVEDAEMON_ADMIN_KEY", "wrong-key-but-long-enough")
        assert main(["users", "list", "--url", url]) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    server_log = log_path.read_text()
    assert "POST /v1/users" in server_log  # the access log is there...
    assert ADMIN_KEY not in server_log  # ...and never shows the key


def test_serve_refuses_to_start_without_admin_key(tiny_protected, monkeypatch, capsys):
    monkeypatch.delenv("ACTIVEDAEMON_ADMIN_KEY", raising=False)
    argv = ["serve", "--model", str(tiny_protected), "--encoder", "fashion-mnist-32"]
    assert main(argv) == 2
    assert "refuses to start" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["users", "list"], ["query", "--user", "abcdefgh"]])
def test_cli_reports_unreachable_service(cmd, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ACTIVEDAEMON_ADMIN_KEY", ADMIN_KEY)
    argv = [*cmd, "--url", f"http://127.0.0.1:{free_port()}"]
    if cmd[0] == "query":
        argv += ["--encoder", "fashion-mnist-32", str(tmp_path / "x.png")]
        data = load_dataset("fashion-mnist", size=32, channels=3, limit_train=0, limit_test=1)
        write_png(data.test.images[0], tmp_path / "x.png")
    assert main(argv) == 2
    assert "cannot reach the service" in capsys.readouterr().err


def test_revocation_through_one_worker_holds_in_all(tiny_protected, tmp_path):
    """`serve --workers 2` on one registry: a revoke answered by whichever worker is effective
    in every worker on the next request (nothing is cached), and a re-activation too."""
    from activedaemon.client import png_bytes
    from activedaemon.tokens import TokenGenerator

    db, log_path = tmp_path / "registry.db", tmp_path / "server.log"
    port = free_port()
    with open(log_path, "wb") as log:
        proc, url = start_server(tiny_protected, db, port, log, ADMIN_KEY, ["--workers", "2"])
    try:
        admin = {"X-Admin-Key": ADMIN_KEY}
        uid = httpx.post(f"{url}/v1/users", json={}, headers=admin).json()["user_id"]
        data = load_dataset("fashion-mnist", size=32, channels=3, limit_train=0, limit_test=1)
        image = TokenGenerator.load("fashion-mnist-32").embed(data.test.images, uid)[0]
        files = [("images", ("a.png", png_bytes(image), "image/png"))]

        def statuses(n: int = 12) -> list[int]:  # a new connection each: both workers serve
            return [httpx.post(f"{url}/v1/predict", files=files).status_code for _ in range(n)]

        assert statuses() == [200] * 12
        assert httpx.post(f"{url}/v1/users/{uid}/revoke", headers=admin).status_code == 200
        assert statuses() == [403] * 12
        assert httpx.post(f"{url}/v1/users/{uid}/activate", headers=admin).status_code == 200
        assert statuses() == [200] * 12
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    server_log = log_path.read_text()
    assert server_log.count("Started server process") == 2, server_log[-2000:]
