"""Load over loopback: a real `activedaemon serve`, one-at-a-time beside dynamic batching, and a
registered user's latency with and without unauthenticated flooding.

    python benchmarks/serve_load.py [--seconds 20] [--clients 32] [--batch 1] [--model RUN]

Each scenario starts its own server (uvicorn, SQLite registry in a temporary folder) in a
subprocess and registers one user whose authorized PNGs (tokens made beforehand) the clients send
back to back:

1. throughput, ``--no-batching`` and batching: ``--clients`` concurrent clients for ``--seconds``,
   quotas off (one client address), requests/s, images/s, p50 / p99 latency, errors (any answer
   but 200, or a failed connection) and the audit check: ``ok`` rows == images answered;
2. flooding, batching with the default client quota (no user quota): one registered user sends
   one image at a time, alone and then beside ``--flooders`` clients (from 127.0.0.2, .3, ...)
   that each send ``--flood-batch`` clean images per request and ignore 429s; the user's p50 in
   both, and what the flooders got.

3. with ``--outage-seconds S`` and a PostgreSQL URL (``--pg-url`` or $ACTIVEDAEMON_TEST_PG_URL):
   batching, quotas off, the registry in a fresh schema behind a TCP proxy that is stopped for
   the middle third of S seconds: answers by status (500s must be 0; 503 while the database is
   away) and the audit check after it returns.

Figures are printed side by side with their ratios (same run, same machine); the clients share
the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

from activedaemon.client import png_bytes
from activedaemon.data import load_dataset
from activedaemon.serve.registry import sqlite_url
from activedaemon.tokens import TokenGenerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_overhead import write_untrained_run  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`activedaemon serve` in a subprocess with a fresh registry (SQLite unless ``db_url``)
    and one user."""

    def __init__(self, run: Path, encoder: str, tmp: Path, name: str, extra: list[str],
                 db_url: str | None = None) -> None:  # fmt: skip
        self.key, self.port = secrets.token_urlsafe(24), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "ACTIVEDAEMON_ADMIN_KEY": self.key,
               "ACTIVEDAEMON_DB_URL": db_url or sqlite_url(tmp / f"{name}.db")}  # fmt: skip
        cmd = [sys.executable, "-m", "activedaemon.cli", "serve", "--model", str(run),
               "--encoder", encoder, "--port", str(self.port), *extra]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            self.proc.kill()
            raise RuntimeError("the server did not start")
        admin = {"X-Admin-Key": self.key}
        self.user = httpx.post(f"{self.url}/v1/users", json={}, headers=admin).json()["user_id"]

    def usage(self) -> dict:
        admin = {"X-Admin-Key": self.key}
        return httpx.get(f"{self.url}/v1/users/{self.user}", headers=admin).json()["usage"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def client_loop(url, payloads, batch, deadline, out, local="127.0.0.1"):
    transport = httpx.AsyncHTTPTransport(local_address=local)
    async with httpx.AsyncClient(base_url=url, timeout=60, transport=transport) as http:
        i = 0
        while time.perf_counter() < deadline:
            files = [("images", (f"{j}.png", payloads[(i + j) % len(payloads)], "image/png"))
                     for j in range(batch)]  # fmt: skip
            started = time.perf_counter()
            try:
                status = (await http.post("/v1/predict", files=files)).status_code
            except httpx.HTTPError:
                status = -1
            out.append((time.perf_counter() - started, status))
            i += batch  # no back-off after a 429: the flooders are hostile


def summarise(results: list, seconds: float, batch: int) -> dict:
    latencies = sorted(1000 * t for t, _ in results)
    return {
        "requests": len(results),
        "rps": len(results) / seconds,
        "ips": len(results) * batch / seconds,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": sum(s != 200 for _, s in results),
        "ok_images": sum(s == 200 for _, s in results) * batch,
        "statuses": dict(Counter(s for _, s in results)),
    }


async def throughput(server: Server, payloads, args) -> dict:
    results: list = []
    deadline = time.perf_counter() + args.seconds
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(server.url, payloads, args.batch, deadline, results)
                           for _ in range(args.clients)))  # fmt: skip
    return summarise(results, time.perf_counter() - started, args.batch)


async def flooding(server: Server, payloads, clean, args, flooders: int) -> tuple[dict, dict]:
    user: list = []
    flood: list = []
    deadline = time.perf_counter() + args.flood_seconds
    started = time.perf_counter()
    await asyncio.gather(
        client_loop(server.url, payloads, 1, deadline, user),
        *(client_loop(server.url, clean, args.flood_batch, deadline, flood, f"127.0.0.{2 + k}")
          for k in range(flooders)),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return summarise(user, seconds, 1), summarise(flood, seconds, args.flood_batch) if flood else {}


async def outage(server: Server, payloads, args, proxy) -> tuple[dict, dict]:
    """Load for ``--outage-seconds``; the proxy (the database) is down for the middle third."""
    results: list = []
    third = args.outage_seconds / 3
    started = time.perf_counter()
    deadline = started + args.outage_seconds

    async def fault() -> dict:
        await asyncio.sleep(third)
        proxy.stop()
        down = time.perf_counter()
        await asyncio.sleep(third)
        proxy.start()
        return {"down_at": down - started, "up_at": time.perf_counter() - started}

    *_, times = await asyncio.gather(
        *(client_loop(server.url, payloads, 1, deadline, results) for _ in range(args.clients)),
        fault(),
    )  # fmt: skip
    return summarise(results, time.perf_counter() - started, 1), times


def pg_schema_url(base: str) -> tuple[str, str]:
    """A fresh schema on the PostgreSQL server: (its URL, its name)."""
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


def run_outage(run: Path, gen, images, tmp: Path, args) -> dict:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_serve_faults import TcpProxy  # the tests' proxy: one implementation

    url, schema = pg_schema_url(args.pg_url)
    parsed = make_url(url)
    proxy = TcpProxy((parsed.host, parsed.port or 5432))
    proxy.start()
    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    server = Server(run, args.encoder, tmp, "outage", ["--client-rate", "0", "--user-rate", "0",
                    "--max-inflight", "0"], db_url=proxied)  # fmt: skip
    try:
        payloads = [png_bytes(x) for x in gen.embed(images, server.user)]
        row, times = asyncio.run(outage(server, payloads, args, proxy))
        row["audited_ok"] = server.usage().get("ok", 0)
    finally:
        server.stop()
        proxy.stop()
        engine = create_engine(args.pg_url)
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()
    return {**row, **times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="per throughput mode")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--flood-seconds", type=float, default=15)
    parser.add_argument("--flooders", type=int, default=3)
    parser.add_argument("--flood-batch", type=int, default=64)
    parser.add_argument("--model", help="protected run folder (default: untrained, --width)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--encoder", default="fashion-mnist-32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--outage-seconds",
        type=float,
        default=0,
        help="also run the registry-outage scenario for this long (PostgreSQL)",
    )
    parser.add_argument("--pg-url", default=os.environ.get("ACTIVEDAEMON_TEST_PG_URL"))
    parser.add_argument("--only-outage", action="store_true", help="skip scenarios 1 and 2")
    args = parser.parse_args()
    if args.outage_seconds and not args.pg_url:
        parser.error("--outage-seconds needs --pg-url or $ACTIVEDAEMON_TEST_PG_URL")
    torch.manual_seed(args.seed)
    gen = TokenGenerator.load(args.encoder)
    images = load_dataset(
        "fashion-mnist", size=gen.arch.image_size, channels=gen.arch.channels, limit_train=0,
        limit_test=64,
    ).test.images  # fmt: skip
    clean = [png_bytes(x) for x in images]
    no_quota = ["--client-rate", "0", "--user-rate", "0", "--max-inflight", "0"]
    rows, fault = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.model) if args.model else write_untrained_run(tmp / "run", args.width, gen)
        if not args.only_outage:
            for mode, extra in (("one-at-a-time", ["--no-batching"]), ("batching", [])):
                server = Server(run, args.encoder, tmp, mode, [*extra, *no_quota])
                try:
                    payloads = [png_bytes(x) for x in gen.embed(images, server.user)]
                    rows[mode] = asyncio.run(throughput(server, payloads, args))
                    rows[mode]["audited_ok"] = server.usage().get("ok", 0)
                finally:
                    server.stop()
            # The default client quota; no user quota (a user sending back to back would hit it).
            server = Server(run, args.encoder, tmp, "flood", ["--user-rate", "0"])
            try:
                payloads = [png_bytes(x) for x in gen.embed(images, server.user)]
                alone, _ = asyncio.run(flooding(server, payloads, clean, args, 0))
                flooded, flood = asyncio.run(flooding(server, payloads, clean, args, args.flooders))
            finally:
                server.stop()
        if args.outage_seconds:
            fault = run_outage(run, gen, images, tmp, args)
    what = args.model or f"untrained resnet18 width {args.width}"
    print(f"model {what}, encoder {args.encoder}, {os.cpu_count()} CPUs, seed {args.seed}")
    if rows:
        report(rows, alone, flooded, flood, args)
    if fault:
        print(f"registry outage: {args.clients} clients, {args.outage_seconds:.0f} s, batching, "
              f"quotas off, PostgreSQL behind a proxy down from {fault['down_at']:.1f} s to "
              f"{fault['up_at']:.1f} s")  # fmt: skip
        print(f"answers by status {fault['statuses']}; 500s: {fault['statuses'].get(500, 0)}; "
              f"answered images {fault['ok_images']}, audited ok {fault['audited_ok']} "
              f"(unaudited: {fault['ok_images'] - fault['audited_ok']})")  # fmt: skip


def report(rows: dict, alone: dict, flooded: dict, flood: dict, args) -> None:
    print(f"throughput: {args.clients} clients, batch {args.batch}, {args.seconds:.0f} s per mode,"
          " quotas off")  # fmt: skip
    print(f"{'mode':<15} {'requests':>8} {'req/s':>7} {'img/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'answered img':>12} {'audited ok':>10}")  # fmt: skip
    for mode, r in rows.items():
        print(f"{mode:<15} {r['requests']:>8} {r['rps']:>7.1f} {r['ips']:>7.1f} "
              f"{r['p50']:>7.1f} {r['p99']:>7.1f} {r['errors']:>6} {r['ok_images']:>12} "
              f"{r['audited_ok']:>10}")  # fmt: skip
    base, fast = rows["one-at-a-time"], rows["batching"]
    print(f"batching / one-at-a-time: req/s x{fast['rps'] / base['rps']:.2f}, "
          f"p99 x{fast['p99'] / base['p99']:.2f}  (targets: >= 3x, p99 <= 300 ms)")  # fmt: skip
    print(
        f"flooding: {args.flooders} clients x {args.flood_batch} clean images per request, "
        f"{args.flood_seconds:.0f} s each, batching, default client quota, no user quota"
    )
    print(f"registered user alone:   {alone['requests']} requests, p50 {alone['p50']:.1f} ms, "
          f"p99 {alone['p99']:.1f} ms, errors {alone['errors']}")  # fmt: skip
    print(f"registered user flooded: {flooded['requests']} requests, p50 {flooded['p50']:.1f} "
          f"ms, p99 {flooded['p99']:.1f} ms, errors {flooded['errors']}")  # fmt: skip
    print(f"flooders got: {flood.get('statuses')} ({flood.get('requests', 0)} requests)")
    print(f"user p50 flooded / alone: x{flooded['p50'] / alone['p50']:.2f}  (target <= 2x)")


if __name__ == "__main__":
    main()
