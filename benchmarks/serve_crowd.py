"""A registered user's latency beside a hostile crowd, through the reference deployment.

    python benchmarks/serve_crowd.py [--seconds 10] [--workers 2] [--direct] [--model RUN]

nginx with the shipped deploy/nginx/activedaemon.conf (TLS, a throw-away certificate) in front of
`activedaemon serve --workers N` (SQLite in a temporary folder, or PostgreSQL from --pg-url /
$ACTIVEDAEMON_TEST_PG_URL in a fresh schema); with ``--direct`` the clients talk to the service
itself, without the proxy. One registered user sends one authorized image per request, up to
50 a second, alone and then beside each flood (each from its own loopback address, for
--seconds, its client a child process at --flood-nice):
early refusals (4 connections of 65-part requests), 32 stalled bodies, unauthenticated 60 MB
owner bodies (2 connections), 500 idle connections, admin-key guessing from one address
(4 connections) and from 12 addresses at once. Printed per phase: the user's requests, p50 / p99
and p99 over the quiet p99; the flood's answers by status (the service's and the proxy's own),
5xx, the audit rows its address left and rows a second, and admin keys the service checked a
second. Loopback, the clients share the machine's cores with the proxy and the service.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from serve_overhead import write_untrained_run  # noqa: E402
from tests.proxy_stack import (  # noqa: E402
    FLOODS,
    Stack,
    Tally,
    finish_flood,
    key_guessing,
    percentile,
    start_flood,
    user_loop,
)

from activedaemon.client import png_bytes  # noqa: E402
from activedaemon.data import load_dataset  # noqa: E402
from activedaemon.serve.registry import Registry, sqlite_url  # noqa: E402
from activedaemon.tokens import TokenGenerator  # noqa: E402

USER, OWNER = "127.0.0.20", "127.0.0.21"
MANY = [f"127.0.1.{i}" for i in range(1, 13)]


def many_guessers(stack, _address, deadline, tally) -> None:
    """Admin-key guessing from 12 addresses at once, one connection each."""
    workers = [threading.Thread(target=key_guessing, args=(stack, a, deadline, tally, 1))
               for a in MANY]  # fmt: skip
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def pg_schema(base: str) -> str:
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with create_engine(base).begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (10)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--direct", action="store_true", help="no proxy: floods hit the service")
    parser.add_argument(
        "--flood-nice",
        type=int,
        default=19,
        help="the flood clients' niceness (19): on a real network the attacker's CPU is not "
        "the server's; 0 lets them take this machine's cores",
    )
    parser.add_argument("--model", help="run folder (default: untrained width-8 ResNet-18)")
    parser.add_argument("--encoder", default="fashion-mnist-32")
    parser.add_argument("--pg-url", default=os.environ.get("ACTIVEDAEMON_TEST_PG_URL"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = TokenGenerator.load(args.encoder)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = Path(args.model) if args.model else write_untrained_run(tmp / "run", 8, gen)
        db = pg_schema(args.pg_url) if args.pg_url else sqlite_url(tmp / "registry.db")
        stack = Stack(run, db, tmp, workers=args.workers, direct=args.direct,
                      extra=["--encoder", args.encoder])  # fmt: skip
        floods = {**FLOODS, "key guessing, 12 addresses": many_guessers}
        addresses = {name: f"127.0.0.{i + 2}" for i, name in enumerate(floods)}
        rows = []
        try:
            stack.start_service()
            stack.start_nginx()
            with stack.client(OWNER) as owner:
                r = owner.post("/v1/users", json={}, headers={"X-Admin-Key": stack.key})
                uid = r.json()["user_id"]
            data = load_dataset("fashion-mnist", size=32, channels=gen.arch.channels,
                                limit_train=0, limit_test=1)  # fmt: skip
            image = gen.embed(data.test.images[:1], uid)[0]
            files = [("images", ("a.png", png_bytes(image), "image/png"))]
            user_loop(stack, USER, files, time.monotonic() + 2, Tally())  # warm-up
            quiet = Tally()
            user_loop(stack, USER, files, time.monotonic() + args.seconds, quiet)
            rows.append(("quiet", quiet, None))
            for name, flood in floods.items():
                tally, user = Tally(), Tally()
                start = time.monotonic()
                deadline = start + args.seconds
                flooding = start_flood(flood, stack, addresses[name], deadline, args.flood_nice)
                user_loop(stack, USER, files, deadline, user)
                finish_flood(flooding, tally)
                rows.append((name, user, tally))
                time.sleep(1.5)  # let the flood's connections close
            time.sleep(2.5)  # the last refusal summaries
        finally:
            stack.stop()
        registry = Registry(db)
        audit = registry.audit(1_000_000)
        registry.close()
    where = "direct to the service" if args.direct else "through nginx"
    print(f"{args.workers} workers, {where}, {args.seconds:.0f} s a phase, registry "
          f"{'PostgreSQL' if args.pg_url else 'SQLite'}, flood clients at nice "
          f"{args.flood_nice}")  # fmt: skip
    quiet_p99 = percentile(quiet.latencies, 0.99)
    print(f"{'phase':28} {'user req':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99/q':>6} {'user !200':>9}"
          f"  flood answers (service | proxy), 5xx, audit rows (/s), keys checked/s")  # fmt: skip
    for name, user, tally in rows:
        lat = user.latencies
        p50, p99 = 1000 * percentile(lat, 0.5), 1000 * percentile(lat, 0.99)
        bad = sum(n for s, n in user.statuses().items() if s != 200)
        if bad:
            print(f"  {name}: the user got {dict(user.statuses())}")
        line = (f"{name:28} {len(lat):8d} {p50:7.1f} {p99:7.1f} {p99 / 1000 / quiet_p99:6.2f} "
                f"{bad:9d}")  # fmt: skip
        if tally is not None:
            mine = [addresses[name]] if name != "key guessing, 12 addresses" else MANY
            mine_rows = [r for r in audit if r.client in mine]
            fives = sum(n for s, n in tally.statuses().items() if s >= 500)
            checked = tally.service[401]  # each a wrong key the service compared
            line += (f"  {dict(tally.service)} | {dict(tally.proxy)}, 5xx {fives}, "
                     f"{len(mine_rows)} ({len(mine_rows) / args.seconds:.1f}/s), "
                     f"{checked / args.seconds:.1f}/s")  # fmt: skip
        print(line)


if __name__ == "__main__":
    main()
