"""Build the service from run folders and start it with uvicorn (`activedaemon serve`): the
secrets, the registry URL, the gate and the settings from the command's arguments, one process
or several (:func:`run_service`) and each ``--workers`` process's app factory
(:func:`worker_app`). The command line only parses."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from activedaemon.serve.authid import AuthIdScheme
from activedaemon.serve.gate import Gatekeeper, Limits
from activedaemon.serve.policy import ServiceSettings, TokenBuckets

log = logging.getLogger(__name__)
ADMIN_KEY_ENV = "ACTIVEDAEMON_ADMIN_KEY"
MASTER_KEY_ENV = "ACTIVEDAEMON_MASTER_KEY"
DB_URL_ENV = "ACTIVEDAEMON_DB_URL"
DEFAULT_DB_URL = "sqlite:///activedaemon-users.db"
MIN_SECRET_CHARS = 16


def _first_line(path: str | Path) -> str:
    lines = Path(path).expanduser().read_text().splitlines()
    return lines[0].strip() if lines else ""


def read_secret(env: str, path: str | Path | None, what: str) -> str:
    """A secret from a file (its first line) or the environment; ValueError if missing or short."""
    if path is not None:
        secret = _first_line(path)
        source = f"the file {path}"
    else:
        secret = os.environ.get(env, "").strip()
        source = f"${env}"
    if not secret:
        raise ValueError(
            f"no {what}: set the environment variable {env} or pass the flag naming a file; "
            "the service refuses to start without one"
        )
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"the {what} from {source} is shorter than {MIN_SECRET_CHARS} characters")
    return secret


def resolve_db_url(flag: str | None, path: str | Path | None) -> str:
    """The registry URL from ``--db-file`` (first line), else $ACTIVEDAEMON_DB_URL, else ``--db``,
    else the default SQLite file. A URL with a password belongs in the file or the variable: a
    command line is visible to every local user in ``ps``."""
    if path is not None:
        url = _first_line(path)
        if not url:
            raise ValueError(f"the file {path} holds no registry URL on its first line")
        return url
    if os.environ.get(DB_URL_ENV, "").strip():
        return os.environ[DB_URL_ENV].strip()
    if flag is None:
        return DEFAULT_DB_URL
    from sqlalchemy.engine import make_url

    if make_url(flag).password:
        log.warning(
            "the --db URL holds a password, visible in ps: use $%s or --db-file", DB_URL_ENV
        )
    return flag


def build_gatekeeper(
    model_run: str | Path,
    encoder: str | Path | None,
    db_url: str,
    *,
    limits: Limits | None = None,
    scheme: AuthIdScheme | None = None,
    master: bytes | None = None,
    force_encoder: bool = False,
    user_quota: TokenBuckets | None = None,
) -> Gatekeeper:
    """Load the protected classifier, the token decoder (default: the encoder on the model's
    card; another one is refused) and the registry."""
    from activedaemon.protect.checkpoint import load_protected
    from activedaemon.serve.registry import Registry

    model, generator = load_protected(model_run, encoder, force=force_encoder)
    card = model.card
    names = card.get("class_names") or [str(i) for i in range(card["num_classes"])]
    return Gatekeeper(generator, model, Registry(db_url), names, limits=limits, scheme=scheme,
                      master=master, user_quota=user_quota)  # fmt: skip


def serve(
    gate: Gatekeeper,
    admin_key: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServiceSettings | None = None,
) -> None:
    """Run the service until interrupted (uvicorn, one process)."""
    import uvicorn

    from activedaemon.serve.app import create_app

    ids, dialect = gate.describe_ids(), gate.registry.dialect
    log.info("serving on http://%s:%d (%s, registry %s)", host, port, ids, dialect)
    app = create_app(gate, admin_key, settings)
    uvicorn.run(app, host=host, port=port, log_level="info")


def auth_scheme(args: argparse.Namespace) -> tuple[AuthIdScheme | None, bytes | None]:
    """The authenticated-id layout and master secret, or (None, None) for plain ids."""
    if not args.auth_ids:
        return None, None
    hash_bits = args.hash_bits if args.bind_image else 0
    retry = args.retry_bits if args.bind_image else 0
    scheme = AuthIdScheme(user_bits=args.user_bits, hash_bits=hash_bits, retry_bits=retry)
    master = read_secret(MASTER_KEY_ENV, args.master_key_file, "master secret")
    return scheme, master.encode()


SERVE_ARGS_ENV = "ACTIVEDAEMON_SERVE_ARGS"


def build_service(args: argparse.Namespace) -> tuple[Gatekeeper, str, ServiceSettings]:
    """(gate, admin key, settings) from the `serve` command's arguments: what each server
    process runs."""
    admin_key = read_secret(ADMIN_KEY_ENV, args.admin_key_file, "admin key")
    scheme, master = auth_scheme(args)
    formats = tuple(f.upper() for f in args.formats.split(","))
    limits = Limits(args.max_images, args.max_bytes, args.max_pixels, formats)
    settings = ServiceSettings(
        batching=not args.no_batching,
        batch_wait_ms=args.batch_wait_ms,
        max_batch_images=args.max_batch_images,
        max_inflight=args.max_inflight,
        client_inflight_share=args.client_inflight_share,
        refusal_interval_s=args.refusal_interval,
        key_attempts_per_s=args.key_rate,
        key_attempts_total_per_s=args.key_rate_total,
        workers=args.workers,
        body_timeout_s=args.body_timeout,
        client_images_per_s=args.client_rate or None,
        client_burst=args.client_burst,
        user_images_per_s=args.user_rate or None,
        user_burst=args.user_burst,
    )
    gate = build_gatekeeper(
        args.model,
        args.encoder,
        resolve_db_url(args.db, args.db_file),
        limits=limits,
        scheme=scheme,
        master=master,
        force_encoder=args.force_encoder,
        user_quota=settings.user_quota(),
    )
    return gate, admin_key, settings


def run_service(args: argparse.Namespace) -> None:
    """Start the service as the `serve` command's arguments ask, until interrupted: one process,
    or ``--workers N`` uvicorn processes, each building its own gate from the same arguments
    (:func:`worker_app`) after the parent has checked the secrets and migrated the registry
    once."""
    if args.workers <= 1:
        gate, admin_key, settings = build_service(args)
        serve(gate, admin_key, args.host, args.port, settings)
        return
    import json

    import uvicorn

    from activedaemon.serve.registry import Registry

    read_secret(ADMIN_KEY_ENV, args.admin_key_file, "admin key")  # refuse early
    auth_scheme(args)
    Registry(resolve_db_url(args.db, args.db_file)).close()  # migrate once, not N times
    fields = {k: v for k, v in vars(args).items() if k != "func"}
    os.environ[SERVE_ARGS_ENV] = json.dumps(fields, default=str)
    uvicorn.run("activedaemon.serve.server:worker_app", factory=True, workers=args.workers,
                host=args.host, port=args.port, log_level="info")  # fmt: skip


def worker_app():
    """uvicorn's app factory in each `serve --workers N` process: the parent's arguments come
    through the environment (no secrets: those are read again from their variable or file)."""
    import json

    from activedaemon.serve.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    gate, admin_key, settings = build_service(
        argparse.Namespace(**json.loads(os.environ[SERVE_ARGS_ENV]))
    )
    return create_app(gate, admin_key, settings)
