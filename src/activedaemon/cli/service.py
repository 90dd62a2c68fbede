"""Deployment: `serve` the protected model, `query` it as a user, manage its `users`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from activedaemon.cli.common import (
    add_command,
    add_encoder,
    add_flag,
    add_json,
    add_model_encoder,
    check_json_path,
    check_user_id,
    emit_json,
    json_only,
    positive_int,
)

DEFAULT_URL = "http://127.0.0.1:8000"


def add_parsers(sub) -> None:
    p = add_command(
        sub,
        "serve",
        help="serve the protected model: answers only registered users' tokened queries",
        description="Start the HTTP service (FastAPI + uvicorn; OpenAPI docs at /docs). "
        "POST /v1/predict decodes the user id from each image, checks it in the registry and "
        "only then classifies. Owner endpoints need the header X-Admin-Key; the key comes from "
        "$ACTIVEDAEMON_ADMIN_KEY or --admin-key-file; the service refuses to start without one.",
    )
    p.add_argument("--model", required=True, help="protected classifier run folder")
    add_model_encoder(p)
    p.add_argument(
        "--db",
        help="registry URL: sqlite:///PATH (default ./activedaemon-users.db) or "
        "postgresql+psycopg://USER@HOST/DB; a URL with a password goes in "
        "$ACTIVEDAEMON_DB_URL or --db-file instead (a command line shows in ps)",
    )
    p.add_argument("--db-file", help="file whose first line is the registry URL (before "
                   "$ACTIVEDAEMON_DB_URL, before --db)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="server processes sharing the port and the registry (1); quotas and "
                   "metrics are per process")  # fmt: skip
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--admin-key-file", help="file holding the admin key (else the env variable)")
    p.add_argument(
        "--max-images", type=positive_int, default=64, help="images per request (default 64)"
    )
    p.add_argument("--max-bytes", type=positive_int, default=1_000_000, help="bytes per image file")
    p.add_argument("--max-pixels", type=positive_int, default=4_000_000, help="pixels per image")
    p.add_argument("--formats", default="png", choices=["png", "png,jpeg"],
                   help="image formats the server decodes (png; png,jpeg only for an encoder "
                   "trained with JPEG noise)")  # fmt: skip
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        help="dynamic batching: wait up to this long for concurrent queries to share a pass (2)",
    )
    p.add_argument(
        "--no-batching", action="store_true", help="answer one query at a time (no batching)"
    )
    p.add_argument(
        "--max-batch-images",
        type=positive_int,
        default=64,
        help="images per decoder / classifier pass (64)",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=32,
        help="queries in flight at once; more get 503 (32; 0: no cap)",
    )
    p.add_argument(
        "--client-inflight-share",
        type=float,
        default=0.25,
        help="the share of --max-inflight one client address may hold (0.25; at least 1)",
    )
    p.add_argument(
        "--refusal-interval",
        type=float,
        default=1.0,
        help="audit at most one refusal row per client address per this many seconds; the "
        "rest are counted into a summary row (1; 0: one row per refusal)",
    )
    p.add_argument(
        "--key-rate",
        type=float,
        default=10.0,
        help="wrong admin keys checked per second per client address (10)",
    )
    p.add_argument(
        "--key-rate-total",
        type=float,
        default=100.0,
        help="wrong admin keys checked per second in all (100)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds a query may take to upload its body; else 408 (30; 0: none)",
    )
    p.add_argument(
        "--client-rate",
        type=float,
        default=100.0,
        help="images a second per client address (100; 0: no quota)",
    )
    p.add_argument("--client-burst", type=float, default=256.0, help="client quota burst (256)")
    p.add_argument(
        "--user-rate",
        type=float,
        default=100.0,
        help="answered images a second per user (100; 0: no quota)",
    )
    p.add_argument("--user-burst", type=float, default=256.0, help="user quota burst (256)")
    p.add_argument("--auth-ids", action="store_true",
                   help="authenticated ids: tokens carry a user number + HMAC under a per-user "
                   "key derived from the master secret ($ACTIVEDAEMON_MASTER_KEY or "
                   "--master-key-file); users get a credential at registration")  # fmt: skip
    p.add_argument("--master-key-file")
    p.add_argument("--user-bits", type=int, default=20, help="bits of the user number (20)")
    p.add_argument("--bind-image", action="store_true",
                   help="the MAC also covers a coarse hash of the image")  # fmt: skip
    p.add_argument("--hash-bits", type=int, default=16, help="image hash bits (16)")
    p.add_argument("--retry-bits", type=int, default=4,
                   help="least certain hash bits the server tries flipping (4)")  # fmt: skip
    p.set_defaults(func=cmd_serve)

    p = add_command(
        sub,
        "query",
        help="add your token to images and ask the service to classify them",
        description="Make USER's token locally with the distributed encoder, send the images "
        "to the service, and print PATH<TAB>label<TAB>class<TAB>confidence. Exits 1 when the "
        "service denies the query (403). In authenticated-id mode pass the credential with "
        "--credential-file or $ACTIVEDAEMON_CREDENTIAL.",
    )
    p.add_argument("images", nargs="+", metavar="IMG")
    p.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    p.add_argument("--user", help="your 8-character user id")
    add_encoder(p, required=True)
    p.add_argument("--credential-file", help="authenticated-id mode: file with the credential")
    p.add_argument("--resize", action="store_true", help="resize images to the encoder's size")
    add_json(p, "the service's answer")
    p.set_defaults(func=cmd_query)

    p_users = add_command(
        sub,
        "users",
        help="owner: add, list, show, revoke, activate users of a running service",
        description="Owner calls to a running service. The admin key comes from "
        "$ACTIVEDAEMON_ADMIN_KEY or --admin-key-file.",
    )
    users_sub = p_users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    for action, text in [
        ("add", "register a user (random id unless --user is given)"),
        ("list", "list users"),
        ("show", "one user with usage counts"),
        ("revoke", "revoke a user (effective on the next query)"),
        ("activate", "re-activate a revoked user"),
    ]:
        p = add_command(users_sub, action, help=text, description=text)
        if action == "add":
            add_flag(
                p,
                "--user",
                aliases=("--id",),
                help="the user id: 8 printable ASCII characters (default: random)",
            )
            p.add_argument("--name", default="", help="display name")
        elif action != "list":
            p.add_argument("id", metavar="ID", help="the user id")
        p.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
        p.add_argument(
            "--admin-key-file", help="file holding the admin key (else the env variable)"
        )
        add_json(p, "the service's answer")
        p.set_defaults(func=cmd_users)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from activedaemon.serve.server import run_service

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_service(args)
    return 0


def terminal_safe(text: str) -> str:
    """``text`` with control and other non-printable characters escaped (``\\x1b``), so that a
    name from the registry cannot move the cursor or rewrite the owner's terminal."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def service_call(url: str, call):
    """Run a client call; connection failures become clear errors (exit 2)."""
    import httpx

    try:
        return call()
    except httpx.TransportError as e:
        raise ValueError(f"cannot reach the service at {url}: {e}") from e


def cmd_query(args: argparse.Namespace) -> int:
    import os

    check_user_id(args.user)
    check_json_path(args.json, args.images)
    from activedaemon.client import Client, ServiceError

    credential = None
    if args.credential_file:
        lines = Path(args.credential_file).read_text().splitlines()
        credential = lines[0].strip() if lines else ""
    elif os.environ.get("ACTIVEDAEMON_CREDENTIAL"):
        credential = os.environ["ACTIVEDAEMON_CREDENTIAL"].strip()
    if args.user is None and credential is None:
        raise ValueError("give --user ID (or a credential in authenticated-id mode)")
    with Client(args.url, args.user, args.encoder, credential=credential) as client:
        try:
            rows = service_call(args.url, lambda: client.predict_files(args.images, args.resize))
        except ServiceError as e:
            print(f"{'denied' if e.status == 403 else 'error'}: {e}", file=sys.stderr)
            return 1 if e.status == 403 else 2
    if not json_only(args):
        for path, row in zip(args.images, rows, strict=True):
            print(f"{path}\t{row['label']}\t{row['class_name']}\t{max(row['probabilities']):.3f}")
    emit_json(args.json, rows)
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    check_user_id(getattr(args, "user", None))
    check_user_id(getattr(args, "id", None), "ID")
    from activedaemon.client import AdminClient, ServiceError
    from activedaemon.serve.server import ADMIN_KEY_ENV, read_secret

    key = read_secret(ADMIN_KEY_ENV, args.admin_key_file, "admin key")
    admin = AdminClient(args.url, key)
    calls = {
        "add": lambda: admin.add(args.user, args.name),
        "list": admin.list,
        "show": lambda: admin.show(args.id),
        "revoke": lambda: admin.revoke(args.id),
        "activate": lambda: admin.activate(args.id),
    }
    try:
        result = service_call(args.url, calls[args.users_command])
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if json_only(args):
        emit_json("-", result)
        return 0
    if args.users_command == "show":
        emit_json("-", result)
    elif args.users_command == "list":
        for u in result:
            fields = (u["user_id"], u["status"], u["created_at"], u["name"])
            print("\t".join(terminal_safe(str(f)) for f in fields))
    else:
        print(f"{terminal_safe(result['user_id'])}\t{result['status']}")
        if result.get("credential"):
            print(f"credential (give it to the user; shown once): {result['credential']}")
    emit_json(args.json, result)
    return 0
