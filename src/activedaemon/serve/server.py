"""Build the service from run folders and start it with uvicorn (`activedaemon serve`)."""

from __future__ import annotations

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
