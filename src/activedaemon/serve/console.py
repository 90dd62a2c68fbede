"""The owner's web console under ``/console``: users, usage, the audit log and the served model.

Server-rendered (Jinja2 templates, one stylesheet, no JavaScript), every asset served by the
package. Sign-in takes the admin key once and hands out a random session id in a cookie (HttpOnly,
SameSite=Strict, Secure over TLS, expiring); the key is never put in a page, a URL, a cookie or a
log. Every form carries the session's CSRF token (the sign-in form a pre-session one, checked
against a cookie). Actions go through the same calls as the HTTP API (``Gatekeeper.add_user``,
``Registry.set_active``), so they take effect on the next prediction. Outcome names are data: the
pages show whatever outcomes the audit log holds.

Sessions live in the registry database (only the SHA-256 of each session id is stored), so they
survive restarts and every ``--workers`` process sees them; a session ends at its expiry, after
an idle timeout, or at sign-out. Wrong keys at sign-in are audited and rationed like the API's
(:class:`~activedaemon.serve.guard.KeyGuard`). The list pages are paged and their filters bounded:
no query string makes a page fail.
"""

# No `from __future__ import annotations`: FastAPI reads these signatures at run time.
import asyncio
import hashlib
import hmac
import io
import json
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

import yaml
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from activedaemon import __version__
from activedaemon.serve.gate import Gatekeeper
from activedaemon.serve.guard import KeyGuard, RefusalLog, client_of
from activedaemon.serve.policy import retry_after
from activedaemon.serve.registry import NO_USER, Registry, UserNotFound

log = logging.getLogger(__name__)

PREFIX = "/console"
SESSION_COOKIE = "ad_console"
LOGIN_COOKIE = "ad_console_login"  # the sign-in form's CSRF token (double submit)
SESSION_SECONDS = 8 * 3600
IDLE_SECONDS = 3600  # a session unused this long ends
LOGIN_FORM_SECONDS = 1800
PAGE_SIZE = 50
USAGE_MENU_USERS = 500  # the usage page's user menu lists the first this many
FAILED_SIGN_IN_DELAY = 0.5  # seconds; slows guessing the key through the form

# Known outcomes in display order, with a colour and a word for people. Others (written by a
# newer service, say) are shown under their own names after these, in grey shades.
OUTCOMES: dict[str, tuple[str, str]] = {
    "ok": ("#2e7d32", "answered"),
    "undecodable": ("#9e9e9e", "no readable token"),
    "unknown": ("#f9a825", "id not registered"),
    "revoked": ("#c62828", "user revoked"),
    "bad_mac": ("#6a1b9a", "MAC does not verify"),
    "batch_rejected": ("#ef6c00", "batch refused (another image)"),
    "limited": ("#1565c0", "rate limited"),
    "bad_input": ("#5d4037", "malformed request"),
    "rate_limited": ("#1565c0", "over a quota"),
    "busy": ("#0277bd", "too many queries in flight"),
    "bad_key": ("#212121", "wrong admin key"),
    "key_throttled": ("#424242", "admin key attempts rationed"),
}
OTHER_COLOURS = ["#616161", "#90a4ae", "#455a64", "#bdbdbd", "#37474f", "#78909c"]

# Chart windows: name -> (bucket width, bucket count).
WINDOWS: dict[str, tuple[timedelta, int]] = {
    "1h": (timedelta(minutes=1), 60),
    "24h": (timedelta(minutes=30), 48),
    "7d": (timedelta(hours=3), 56),
    "30d": (timedelta(hours=12), 60),
}
DEFAULT_WINDOW = "24h"

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def ordered_outcomes(names) -> list[str]:
    """Known outcomes first (in :data:`OUTCOMES` order), then any others, sorted."""
    names = set(names)
    return [o for o in OUTCOMES if o in names] + sorted(names - OUTCOMES.keys())


def outcome_colour(name: str) -> str:
    if name in OUTCOMES:
        return OUTCOMES[name][0]
    return OTHER_COLOURS[sum(name.encode()) % len(OTHER_COLOURS)]


def window_edges(window: str, now: datetime | None = None) -> list[datetime]:
    """Bucket edges of a chart window, the last bucket holding ``now`` (UTC, aligned)."""
    width, count = WINDOWS[window]
    now = now or datetime.now(timezone.utc)
    step = width.total_seconds()
    end = datetime.fromtimestamp(math.floor(now.timestamp() / step) * step + step, timezone.utc)
    return [end - width * (count - i) for i in range(count + 1)]


_CHART_LOCK = threading.Lock()


def _plain(text: str) -> str:
    """Text matplotlib draws as it is (user ids and outcome names may hold '$': mathtext)."""
    return text.replace("$", r"\$")


def usage_chart_svg(edges: list[datetime], counts: dict[str, list[int]], title: str) -> str:
    """Stacked bars of audited images per outcome over time, as SVG text (text kept as text)."""
    import matplotlib
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    starts = edges[:-1]
    width = (edges[1] - edges[0]) * 0.9
    # rc_context changes matplotlib's global settings: one chart at a time.
    with (
        _CHART_LOCK,
        matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "activedaemon"}),
    ):
        fig = Figure(figsize=(9, 3.2))
        ax = fig.add_subplot()
        bottom = [0] * len(starts)
        for name in ordered_outcomes(counts):
            series = counts[name]
            ax.bar(
                starts,
                series,
                width=width,
                bottom=bottom,
                align="edge",
                color=outcome_colour(name),
                label=_plain(f"{name} ({sum(series)})"),
            )
            bottom = [b + c for b, c in zip(bottom, series, strict=True)]
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0, max([*bottom, 1]) * 1.1)
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.set_ylabel("images")
        ax.set_title(_plain(title), fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        if counts:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
        else:
            ax.text(
                0.5,
                0.5,
                "no queries in this window",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="#757575",
            )
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


# -- sessions -----------------------------------------------------------------------------------
@dataclass
class ConsoleSession:
    sid_hash: str
    csrf: str
    flash: list  # [kind, text] pairs, shown once


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "replace")).hexdigest()


class Sessions:
    """Signed-in browsers, stored in the registry: random session id (only its SHA-256 is
    stored) -> CSRF token, expiry, last use and one-shot messages."""

    def __init__(self, store: Registry, seconds: float, idle_seconds: float = IDLE_SECONDS):
        self.store, self.seconds, self.idle = store, seconds, idle_seconds

    def create(self) -> tuple[str, ConsoleSession]:
        sid = secrets.token_urlsafe(32)
        session = ConsoleSession(_hash(sid), secrets.token_urlsafe(32), [])
        expires = datetime.now(timezone.utc) + timedelta(seconds=self.seconds)
        self.store.create_session(session.sid_hash, session.csrf, expires)
        return sid, session

    def get(self, sid: str | None) -> ConsoleSession | None:
        if not sid or len(sid) > 200:
            return None
        stored = self.store.get_session(_hash(sid))
        if stored is None:
            return None
        now = datetime.now(timezone.utc)
        idle = (now - stored.last_seen).total_seconds()
        if stored.expires_at <= now or idle >= self.idle:
            self.store.drop_session(stored.sid_hash)
            return None
        if idle >= min(60.0, self.idle / 4):  # not a write per page
            self.store.update_session(stored.sid_hash, last_seen=now)
        return ConsoleSession(stored.sid_hash, stored.csrf, [tuple(f) for f in stored.flash])

    def add_flash(self, session: ConsoleSession, kind: str, text: str) -> None:
        session.flash.append((kind, text))
        self.store.update_session(session.sid_hash, flash=session.flash)

    def take_flash(self, session: ConsoleSession) -> list:
        flash, session.flash = session.flash, []
        if flash:
            self.store.update_session(session.sid_hash, flash=[])
        return flash

    def drop(self, sid: str | None) -> None:
        if sid:
            self.store.drop_session(_hash(sid))


# -- the model's records --------------------------------------------------------------------------
def _flatten(data, prefix: str = "", limit: int = 200) -> list[tuple[str, str]]:
    """Nested dicts -> (dotted key, short text) rows; long lists are summarised."""
    rows: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            rows += _flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}", limit)
        return rows[:limit]
    if isinstance(data, float):
        text = f"{data:.4g}"
    elif isinstance(data, list) and (len(data) > 12 or any(isinstance(x, dict) for x in data)):
        text = f"[{len(data)} items]"
    else:
        text = json.dumps(data) if not isinstance(data, str) else data
    return [(prefix.rstrip("."), text if len(text) <= 300 else text[:297] + "...")]


def _read(path: Path):
    try:
        text = path.read_text()
        return yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        log.warning("console: cannot read %s: %s", path, e)
        return None


def model_records(run: Path | None) -> dict:
    """What lies in and beside the served model's run folder: results.json (``evaluate``) and
    attack reports (``attack ... --out``: attacks.json in the run folder, a sub-folder of it or a
    sibling folder), the dormancy audit being one of those attacks."""
    if run is None:
        return {"run": None, "results": None, "reports": []}
    run = Path(run)
    results_path = run / "results.json" if (run / "results.json").is_file() else None
    results = _read(results_path) if results_path else None
    candidates = [run / "attacks.json", *sorted(run.glob("*/attacks.json"))]
    if run.parent != run:
        candidates += [p for p in sorted(run.parent.glob("*/attacks.json")) if p.parent != run]
    reports = []
    for path in candidates:
        data = _read(path) if path.is_file() else None
        if not isinstance(data, dict) or not isinstance(data.get("attacks"), dict):
            continue
        attacks = []
        for name, a in data["attacks"].items():
            if not isinstance(a, dict):
                continue
            metrics = {k: v for k, v in (a.get("metrics") or {}).items() if v is not None}
            attacks.append(
                {
                    "name": name,
                    "verdict": str(a.get("verdict", "")),
                    "target": str(a.get("target", "")),
                    "metrics": _flatten(metrics, limit=12),
                    "table": [r for r in (a.get("table") or []) if isinstance(r, dict)][:40],
                }
            )
        reports.append(
            {
                "path": str(path),
                "attacks": attacks,
                "info": _flatten(
                    {
                        k: data.get(k)
                        for k in ("dataset", "test_images", "seed", "fast", "commit")
                        if k in data
                    }
                ),
            }
        )
    scalars, per_user = [], []
    if isinstance(results, dict):
        per_user = [r for r in results.get("per_user") or [] if isinstance(r, dict)][:50]
        scalars = _flatten({k: v for k, v in results.items() if k != "per_user"})
    return {
        "run": str(run),
        "results_path": str(results_path) if results_path else None,
        "results": scalars if results is not None else None,
        "per_user": per_user,
        "reports": reports,
    }


# -- request parsing ----------------------------------------------------------------------------
class _Refused(Exception):
    """A request the console turns down with a page that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _SignInFirst(Exception):
    """A page asked for without a live session: the answer is the sign-in page."""


EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)
MAX_PAGE = 10**9


def _parse_time(text: str) -> datetime | None:
    """An ISO time from a form (``datetime-local`` gives no zone: UTC is meant), clamped to
    [1970, 9000) UTC: a time that would leave the calendar once in UTC is a bound of no use."""
    text = text.strip()[:64]
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _Refused(400, f"not a time: {text[:40]!r} (use YYYY-MM-DDTHH:MM, UTC)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    try:
        t = t.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01 at +14:00, 9999-12-31 at -14:00
        return EARLIEST if t.year < 2000 else LATEST
    return min(max(t, EARLIEST), LATEST)


def _page_number(text: str | None) -> int:
    """A page number from a query string: 1 unless a positive integer; at most MAX_PAGE."""
    text = (text or "").strip()
    if not text.isdigit() or len(text) > 12:
        return 1 if not text.isdigit() else MAX_PAGE
    return min(max(1, int(text)), MAX_PAGE)


def _paging(total: int, requested: str | None, link) -> tuple[int, dict]:
    """The first row of the page asked for (clamped to the pages ``total`` rows fill) and the
    template's paging fields; ``link(p)`` is page p's address."""
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(_page_number(requested), pages)
    fields = {
        "page_no": page,
        "pages": pages,
        "prev_link": link(page - 1) if page > 1 else None,
        "next_link": link(page + 1) if page < pages else None,
    }
    return (page - 1) * PAGE_SIZE, fields


def _user_param(request: Request) -> str | None:
    user = request.query_params.get("user")
    if user is None or user == "*":
        return None
    return NO_USER if user == "(none)" else user[:8]


def _window(request: Request) -> str:
    window = request.query_params.get("window", DEFAULT_WINDOW)
    return window if window in WINDOWS else DEFAULT_WINDOW


def _fmt_time(t: datetime | None) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else ""


# -- what the routes share ----------------------------------------------------------------------
def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(resources.files("activedaemon.serve") / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["t"] = _fmt_time
    env.globals.update(
        prefix=PREFIX,
        version=__version__,
        outcome_colour=outcome_colour,
        outcome_word=lambda o: OUTCOMES.get(o, ("", "recorded by the service"))[1],
        urlencode=urlencode,
    )
    return env


TEMPLATES = _templates()
STATIC = resources.files("activedaemon.serve") / "static"


@dataclass
class Console:
    """The console of one app (``app.state.console``): the gate it acts through, the admin-key
    rationing and refusal audit it shares with the API, its sessions and the served model's
    run folder."""

    gate: Gatekeeper
    keys: KeyGuard
    refusals: RefusalLog
    sessions: Sessions
    run: Path | None
    session_seconds: float

    @property
    def registry(self) -> Registry:
        return self.gate.registry

    def page(
        self, request: Request, template: str, status: int = 200, session=None, once=(), **ctx
    ) -> Response:
        """A page; ``once``: messages for this answer only (never stored)."""
        flash = self.sessions.take_flash(session) if session is not None else []
        html = TEMPLATES.get_template(template).render(
            request=request, session=session, flash=[*flash, *once], **ctx
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def usage(self, user: str | None, window: str) -> dict:
        """The usage summary of one user (all when None) over a chart window."""
        edges = window_edges(window)
        counts = self.registry.usage_over_time(edges, user)
        return {
            "window": window,
            "windows": list(WINDOWS),
            "totals": {o: sum(counts[o]) for o in ordered_outcomes(counts)},
            "since": edges[0],
            "until": edges[-1],
            "chart": f"{PREFIX}/usage.svg?"
            + urlencode({"window": window, **({"user": user} if user is not None else {})}),
        }


def _to(path: str) -> RedirectResponse:
    return RedirectResponse(PREFIX + path, status_code=303, headers=SECURITY_HEADERS)


def _cookie_args(request: Request) -> dict:
    secure = request.url.scheme == "https"
    return {"httponly": True, "samesite": "strict", "path": PREFIX, "secure": secure}


# -- dependencies -------------------------------------------------------------------------------
def get_console(request: Request) -> Console:
    return request.app.state.console


ConsoleDep = Annotated[Console, Depends(get_console)]


def current_session(request: Request, console: ConsoleDep) -> ConsoleSession | None:
    """The browser's live session, if any (kept on the request for the refusal page)."""
    session = console.sessions.get(request.cookies.get(SESSION_COOKIE))
    request.state.console_session = session
    return session


def signed_in(
    session: Annotated[ConsoleSession | None, Depends(current_session)],
) -> ConsoleSession:
    if session is None:
        raise _SignInFirst
    return session


SessionDep = Annotated[ConsoleSession, Depends(signed_in)]


async def checked_form(request: Request, session: SessionDep) -> dict[str, str]:
    """The posted form, after its CSRF token is checked against the session's."""
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    token = form.get("csrf", "")
    if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise _Refused(403, "the form's CSRF token is missing or wrong; reload the page")
    return form


FormDep = Annotated[dict[str, str], Depends(checked_form)]


async def _refused(request: Request, e: _Refused) -> Response:
    log.info("console: refused %s %s (%d)", request.method, request.url.path, e.status)
    session = getattr(request.state, "console_session", None)
    page = request.app.state.console.page
    status, reason = e.status, e.reason
    return await run_in_threadpool(page, request, "refused.html", status, session, reason=reason)


async def _sign_in_first(_request: Request, _e: _SignInFirst) -> Response:
    return _to("/login")


router = APIRouter(prefix=PREFIX, include_in_schema=False)


def mount_console(
    app: FastAPI,
    gate: Gatekeeper,
    admin_key: str,
    *,
    model_run: str | Path | None = None,
    session_seconds: float = SESSION_SECONDS,
    idle_seconds: float = IDLE_SECONDS,
    keys: KeyGuard | None = None,
    refusals: RefusalLog | None = None,
) -> None:
    """Add the console to ``app`` under :data:`PREFIX`. ``model_run``: the served model's run
    folder, for the model page (default: the folder the classifier was loaded from). ``keys``
    and ``refusals``: the service's admin-key rationing and refusal audit (its own when
    absent)."""
    if not admin_key:
        raise ValueError("an admin key is required")
    run = model_run if model_run is not None else getattr(gate.model, "run_folder", None)
    app.state.console = Console(
        gate=gate,
        keys=keys or KeyGuard(admin_key),
        refusals=refusals or RefusalLog(gate.registry),
        sessions=Sessions(gate.registry, session_seconds, idle_seconds),
        run=Path(run) if run is not None else None,
        session_seconds=session_seconds,
    )
    app.add_exception_handler(_Refused, _refused)
    app.add_exception_handler(_SignInFirst, _sign_in_first)
    app.include_router(router)


# -- assets, sign-in and sign-out ---------------------------------------------------------------
@router.get("/static/{name}")
def asset(name: str) -> Response:
    types = {".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
    if "/" in name or name.startswith(".") or Path(name).suffix not in types:
        return Response(status_code=404)
    path = STATIC / name
    if not path.is_file():
        return Response(status_code=404)
    return Response(
        path.read_bytes(),
        media_type=types[Path(name).suffix],
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def _login_page(console: Console, request: Request, status: int = 200, error="") -> Response:
    token = secrets.token_urlsafe(32)
    response = console.page(request, "login.html", status, login_csrf=token, error=error)
    response.set_cookie(LOGIN_COOKIE, token, max_age=LOGIN_FORM_SECONDS, **_cookie_args(request))
    return response


@router.get("/login")
def login_form(
    request: Request,
    console: ConsoleDep,
    session: Annotated[ConsoleSession | None, Depends(current_session)],
) -> Response:
    return _to("/") if session is not None else _login_page(console, request)


@router.post("/login")
async def login(request: Request, console: ConsoleDep) -> Response:
    started, client = time.perf_counter(), client_of(request.scope)
    form = await request.form()
    token, cookie = str(form.get("csrf", "")), request.cookies.get(LOGIN_COOKIE, "")
    if not token or not cookie or not hmac.compare_digest(token.encode(), cookie.encode()):
        raise _Refused(
            403, "the sign-in form's CSRF token is missing or wrong; reload the sign-in page"
        )
    verdict, wait = console.keys.check(client, str(form.get("key", "")))
    if verdict == "throttled":
        await console.refusals.refuse(client, started, 0, "key_throttled",
                                      "admin key not checked; console sign-in")  # fmt: skip
        return _login_page(console, request, 429,
                           f"Too many wrong keys: try again in {retry_after(wait)} s.")  # fmt: skip
    if verdict == "wrong":
        log.warning("console: failed sign-in from %s", client)
        await console.refusals.refuse(client, started, 0, "bad_key",
                                      "wrong admin key; console sign-in")  # fmt: skip
        await asyncio.sleep(FAILED_SIGN_IN_DELAY)
        return _login_page(console, request, 401, "That is not the admin key.")
    sid, session = await run_in_threadpool(console.sessions.create)
    log.info("console: signed in")
    response = _to("/")
    response.set_cookie(
        SESSION_COOKIE, sid, max_age=int(console.session_seconds), **_cookie_args(request)
    )
    response.delete_cookie(LOGIN_COOKIE, **_cookie_args(request))
    return response


@router.post("/logout")
async def logout(request: Request, console: ConsoleDep, _form: FormDep) -> Response:
    await run_in_threadpool(console.sessions.drop, request.cookies.get(SESSION_COOKIE))
    log.info("console: signed out")
    response = _to("/login")
    response.delete_cookie(SESSION_COOKIE, **_cookie_args(request))
    return response


# -- pages --------------------------------------------------------------------------------------
@router.get("/")
def overview(request: Request, console: ConsoleDep, session: SessionDep) -> Response:
    registry = console.registry
    return console.page(
        request,
        "overview.html",
        session=session,
        page="overview",
        ids=console.gate.describe_ids(),
        dialect=registry.dialect,
        n_users=registry.count_users(),
        n_active=registry.count_active_users(),
        **console.usage(None, DEFAULT_WINDOW),
    )


@router.get("/users")
def users_page(request: Request, console: ConsoleDep, session: SessionDep) -> Response:
    return _users(request, console, session)


def _users(request: Request, console: Console, session: ConsoleSession, once=()) -> Response:
    registry = console.registry
    activity = registry.user_activity()
    offset, paging = _paging(
        registry.count_users(),
        request.query_params.get("page"),
        lambda p: f"{PREFIX}/users?page={p}",
    )
    rows = []
    for u in registry.list_users(offset, PAGE_SIZE):
        act = activity.get(u.user_id)
        usage = act.usage if act else {}
        rows.append(
            {
                "user": u,
                "ok": usage.get("ok", 0),
                "refused": sum(n for o, n in usage.items() if o != "ok"),
                "usage": usage,
                "last": act.last_query if act else None,
            }
        )
    return console.page(
        request,
        "users.html",
        session=session,
        page="users",
        rows=rows,
        ordered_outcomes=ordered_outcomes,
        once=once,
        **paging,
    )


@router.post("/users")
async def add_user(
    request: Request, console: ConsoleDep, session: SessionDep, form: FormDep
) -> Response:
    uid = form.get("user_id", "").strip("\r\n") or None
    name = form.get("name", "").strip()
    try:
        info, credential = await run_in_threadpool(console.gate.add_user, uid, name)
    except ValueError as e:  # UserExists too: a message on the users page, not a refusal
        await run_in_threadpool(console.sessions.add_flash, session, "error", str(e))
        return _to("/users")
    log.info("user %s registered (console)", info.user_id)
    text = f"Registered user {info.user_id}" + (f" ({info.name})" if info.name else "") + "."
    await run_in_threadpool(console.sessions.add_flash, session, "ok", text)
    if credential:  # key material: shown in this answer, never stored with the session
        once = [("credential", credential)]
        return await run_in_threadpool(_users, request, console, session, once)
    return _to("/users")


async def _set_active(console: Console, session, form: dict, active: bool) -> Response:
    uid = form.get("user_id", "")
    try:
        info = await run_in_threadpool(console.registry.set_active, uid, active)
    except UserNotFound:
        text = f"No user {uid[:40]!r}."
        await run_in_threadpool(console.sessions.add_flash, session, "error", text)
        return _to("/users")
    log.info("user %s %s (console)", uid, info.status)
    text = f"User {uid} is {info.status}."
    await run_in_threadpool(console.sessions.add_flash, session, "ok", text)
    return _to("/users")


@router.post("/users/revoke")
async def revoke(console: ConsoleDep, session: SessionDep, form: FormDep) -> Response:
    return await _set_active(console, session, form, False)


@router.post("/users/activate")
async def activate(console: ConsoleDep, session: SessionDep, form: FormDep) -> Response:
    return await _set_active(console, session, form, True)


@router.get("/usage")
def usage_page(request: Request, console: ConsoleDep, session: SessionDep) -> Response:
    user = _user_param(request)
    return console.page(
        request,
        "usage.html",
        session=session,
        page="usage",
        user=user,
        user_ids=[u.user_id for u in console.registry.list_users(0, USAGE_MENU_USERS)],
        **console.usage(user, _window(request)),
    )


@router.get("/usage.svg")
def usage_svg(
    request: Request,
    console: ConsoleDep,
    session: Annotated[ConsoleSession | None, Depends(current_session)],
) -> Response:
    if session is None:  # an image: no sign-in page in its place
        return Response(status_code=401, headers=SECURITY_HEADERS)
    user, window = _user_param(request), _window(request)
    edges = window_edges(window)
    who = {None: "all queries", NO_USER: "queries without a readable id"}.get(user, f"user {user}")
    svg = usage_chart_svg(
        edges,
        console.registry.usage_over_time(edges, user),
        f"{who}, last {window}, by outcome (UTC)",
    )
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    return Response(svg, media_type="image/svg+xml", headers=headers)


@router.get("/audit")
def audit_page(request: Request, console: ConsoleDep, session: SessionDep) -> Response:
    q, registry = request.query_params, console.registry
    outcome = (q.get("outcome") or "")[:64] or None
    since, until = _parse_time(q.get("since", "")), _parse_time(q.get("until", ""))
    user = _user_param(request) if q.get("user") else None
    keep = {k: q[k][:64] for k in ("user", "outcome", "since", "until") if q.get(k)}
    offset, paging = _paging(
        registry.audit_page(user, outcome, since, until, 0, 1)[1],
        q.get("page"),
        lambda p: f"{PREFIX}/audit?" + urlencode({**keep, "page": p}),
    )
    rows, total = registry.audit_page(user, outcome, since, until, offset, PAGE_SIZE)
    return console.page(
        request,
        "audit.html",
        session=session,
        page="audit",
        rows=rows,
        total=total,
        filters=keep,
        outcomes=ordered_outcomes(registry.audit_outcomes()),
        **paging,
    )


@router.get("/model")
def model_page(request: Request, console: ConsoleDep, session: SessionDep) -> Response:
    gate = console.gate
    card = getattr(gate.model, "card", None) or {}
    enc_card = dict(gate.generator.card or {})
    enc_card.pop("training", None)  # the encoder's full training config: in its run folder
    return console.page(
        request,
        "model.html",
        session=session,
        page="model",
        card=_flatten(card),
        encoder_name=card.get("encoder"),
        encoder=_flatten(enc_card),
        ids=gate.describe_ids(),
        class_names=list(gate.class_names),
        **model_records(console.run),
    )
