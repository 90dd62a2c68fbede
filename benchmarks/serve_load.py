"""Load over loopback: N concurrent clients query a real `activedaemon serve` for S seconds.

    python benchmarks/serve_load.py [--seconds 60] [--clients 32] [--batch 1] [--model RUN]

Starts the server (uvicorn, SQLite registry in a temporary folder) in a subprocess, registers one
user, and has each client send authorized PNGs (tokens made beforehand) back to back. Prints
requests/s, images/s, p50 / p99 latency and errors (any answer but 200, or a failed connection).
The clients share the machine's cores with the server.
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


def start_server(run: Path, encoder: str, db: Path, port: int, key: str, log) -> subprocess.Popen:
    env = {**os.environ, "ACTIVEDAEMON_ADMIN_KEY": key}
    cmd = [sys.executable, "-m", "activedaemon.cli", "serve", "--model", str(run), "--encoder",
           encoder, "--db", sqlite_url(db), "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start")


async def client_loop(url: str, payloads: list[bytes], batch: int, deadline: float, out: list):
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
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
            i += batch


async def load(url: str, payloads: list[bytes], args: argparse.Namespace) -> list:
    results: list = []
    deadline = time.perf_counter() + args.seconds
    await asyncio.gather(
        *(client_loop(url, payloads, args.batch, deadline, results) for _ in range(args.clients))
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--model", help="protected run folder (default: untrained, --width)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--encoder", default="fashion-mnist-32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    gen = TokenGenerator.load(args.encoder)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.model) if args.model else write_untrained_run(tmp / "run", args.width, gen)
        key, port = secrets.token_urlsafe(24), free_port()
        url = f"http://127.0.0.1:{port}"
        with open(tmp / "server.log", "wb") as log:
            proc = start_server(run, args.encoder, tmp / "registry.db", port, key, log)
            try:
                r = httpx.post(f"{url}/v1/users", json={"name": "load"},
                               headers={"X-Admin-Key": key})  # fmt: skip
                user = r.json()["user_id"]
                images = load_dataset(
                    "fashion-mnist", size=gen.arch.image_size, channels=gen.arch.channels,
                    limit_train=0, limit_test=64,
                ).test.images  # fmt: skip
                payloads = [png_bytes(x) for x in gen.embed(images, user)]
                started = time.perf_counter()
                results = asyncio.run(load(url, payloads, args))
                elapsed = time.perf_counter() - started
                audited = httpx.get(f"{url}/v1/users/{user}", headers={"X-Admin-Key": key})
                usage = audited.json()["usage"]
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
    latencies = sorted(1000 * t for t, _ in results)
    errors = sum(status != 200 for _, status in results)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    what = args.model or f"untrained resnet18 width {args.width}"
    print(f"model {what}, encoder {args.encoder}, {args.clients} clients, batch {args.batch}, "
          f"{elapsed:.0f} s, {os.cpu_count()} CPUs, seed {args.seed}")  # fmt: skip
    print(f"requests {len(results)}  requests/s {len(results) / elapsed:.1f}  "
          f"images/s {len(results) * args.batch / elapsed:.1f}")  # fmt: skip
    print(f"latency ms  p50 {statistics.median(latencies):.1f}  p99 {p99:.1f}  "
          f"max {latencies[-1]:.1f}")  # fmt: skip
    print(f"errors {errors}  audited images {usage}")


if __name__ == "__main__":
    main()
