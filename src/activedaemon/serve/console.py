"""The owner's web console under ``/console``: users, usage, the audit log and the served model.

Server-rendered (Jinja2 templates, one stylesheet, no JavaScript), every asset served by the
package. Sign-in takes the admin key once and hands out a random session id in a cookie (HttpOnly,
SameSite=Strict, Secure over TLS, expiring); the key is never put in a page, a URL, a cookie or a
log. Every form carries the session's CSRF token (the sign-in form a pre-session one, checked
against a cookie). Actions go through the same calls as the HTTP API (``Gatekeeper.add_user``,
``Registry.set_active``), so they take effect on the next prediction. Outcome names are data: the
pages show whatever outcomes the audit log holds.

Sessions live in the service's memory: a restart signs everyone out.
"""

# No `from __future__ import annotations`: FastAPI reads these signatures at run time.
import asyncio
import hmac
import io
import json
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from urllib.parse import urlencode

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from activedaemon import __version__
from activedaemon.serve.gate import Gatekeeper
from activedaemon.serve.registry import NO_USER, UserExists, UserNotFound

log = logging.getLogger(__name__)

PREFIX = "/console"
SESSION_COOKIE = "ad_console"
LOGIN_COOKIE = "ad_console_login"  # the sign-in form's CSRF token (double submit)
SESSION_SECONDS = 8 * 3600
LOGIN_FORM_SECONDS = 1800
PAGE_SIZE = 50
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
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text), shown once


class Sessions:
    """Signed-in browsers: random session id -> CSRF token, expiry and one-shot messages."""

    def __init__(self, seconds: float, clock=time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self._by_id: dict[str, ConsoleSession] = {}
        self._lock = threading.Lock()

    def create(self) -> tuple[str, ConsoleSession]:
        sid = secrets.token_urlsafe(32)
        session = ConsoleSession(secrets.token_urlsafe(32), self.clock() + self.seconds)
        with self._lock:
            now = self.clock()
            self._by_id = {k: v for k, v in self._by_id.items() if v.expires > now}
            self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> ConsoleSession | None:
        if not sid:
            return None
        with self._lock:
            session = self._by_id.get(sid)
            if session is not None and session.expires <= self.clock():
                del self._by_id[sid]
                return None
            return session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


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


# -- the router ---------------------------------------------------------------------------------
class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _parse_time(text: str) -> datetime | None:
    """An ISO time from a form (``datetime-local`` gives no zone: UTC is meant)."""
    text = text.strip()
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _Refused(400, f"not a time: {text[:40]!r} (use YYYY-MM-DDTHH:MM, UTC)") from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _fmt_time(t: datetime | None) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else ""


def console_router(
    gate: Gatekeeper,
    admin_key: str,
    *,
    model_run: str | Path | None = None,
    session_seconds: float = SESSION_SECONDS,
) -> APIRouter:
    """The console's routes (mount with ``app.include_router``). ``model_run``: the served
    model's run folder, for the model page (default: the folder the classifier was loaded from)."""
    if not admin_key:
        raise ValueError("an admin key is required")
    expected = admin_key.encode()
    registry = gate.registry
    run = model_run if model_run is not None else getattr(gate.model, "run_folder", None)
    sessions = Sessions(session_seconds)
    static = resources.files("activedaemon.serve") / "static"
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
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def _cookie_args(request: Request) -> dict:
        return {
            "httponly": True,
            "samesite": "strict",
            "path": PREFIX,
            "secure": request.url.scheme == "https",
        }

    def _page(request: Request, template: str, status: int = 200, session=None, **ctx) -> Response:
        flash = []
        if session is not None:
            flash, session.flash = session.flash, []
        html = env.get_template(template).render(
            request=request, session=session, flash=flash, **ctx
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def _to(path: str) -> RedirectResponse:
        return RedirectResponse(PREFIX + path, status_code=303, headers=SECURITY_HEADERS)

    def _session(request: Request) -> ConsoleSession | None:
        return sessions.get(request.cookies.get(SESSION_COOKIE))

    async def _form(request: Request, session: ConsoleSession) -> dict[str, str]:
        """The posted form, after its CSRF token is checked against the session's."""
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        token = form.get("csrf", "")
        if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
            raise _Refused(403, "the form's CSRF token is missing or wrong; reload the page")
        return form

    def _refused(request: Request, e: _Refused, session=None) -> Response:
        log.info("console: refused %s %s (%d)", request.method, request.url.path, e.status)
        return _page(request, "refused.html", e.status, session=session, reason=e.reason)

    # -- assets, sign-in and sign-out ----------------------------------------------------------
    @router.get("/static/{name}")
    def asset(name: str) -> Response:
        types = {".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
        path = static / name
        if "/" in name or name.startswith(".") or Path(name).suffix not in types:
            return Response(status_code=404)
        if not path.is_file():
            return Response(status_code=404)
        return Response(
            path.read_bytes(),
            media_type=types[Path(name).suffix],
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    def _login_page(request: Request, status: int = 200, error: str = "") -> Response:
        token = secrets.token_urlsafe(32)
        response = _page(request, "login.html", status, login_csrf=token, error=error)
        response.set_cookie(
            LOGIN_COOKIE, token, max_age=LOGIN_FORM_SECONDS, **_cookie_args(request)
        )
        return response

    @router.get("/login")
    def login_form(request: Request) -> Response:
        if _session(request) is not None:
            return _to("/")
        return _login_page(request)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        token, cookie = str(form.get("csrf", "")), request.cookies.get(LOGIN_COOKIE, "")
        if not token or not cookie or not hmac.compare_digest(token.encode(), cookie.encode()):
            return _refused(
                request,
                _Refused(
                    403,
                    "the sign-in form's CSRF token is missing or wrong; reload the sign-in page",
                ),
            )
        key = str(form.get("key", ""))
        if not hmac.compare_digest(key.encode(), expected):
            log.info("console: failed sign-in")
            await asyncio.sleep(FAILED_SIGN_IN_DELAY)
            return _login_page(request, 401, "That is not the admin key.")
        sid, session = sessions.create()
        log.info("console: signed in")
        response = _to("/")
        response.set_cookie(
            SESSION_COOKIE, sid, max_age=int(session_seconds), **_cookie_args(request)
        )
        response.delete_cookie(LOGIN_COOKIE, **_cookie_args(request))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return _to("/login")
        try:
            await _form(request, session)
        except _Refused as e:
            return _refused(request, e, session)
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        log.info("console: signed out")
        response = _to("/login")
        response.delete_cookie(SESSION_COOKIE, **_cookie_args(request))
        return response

    # -- pages ---------------------------------------------------------------------------------
    def _usage_ctx(user: str | None, window: str) -> dict:
        edges = window_edges(window)
        counts = registry.usage_over_time(edges, user)
        totals = {o: sum(counts[o]) for o in ordered_outcomes(counts)}
        return {
            "window": window,
            "windows": list(WINDOWS),
            "totals": totals,
            "since": edges[0],
            "until": edges[-1],
            "chart": f"{PREFIX}/usage.svg?"
            + urlencode({"window": window, **({"user": user} if user is not None else {})}),
        }

    @router.get("/")
    def overview(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return _to("/login")
        users = registry.list_users()
        ctx = _usage_ctx(None, DEFAULT_WINDOW)
        return _page(
            request,
            "overview.html",
            session=session,
            page="overview",
            ids=gate.describe_ids(),
            dialect=registry.dialect,
            n_users=len(users),
            n_active=sum(u.active for u in users),
            **ctx,
        )

    @router.get("/users")
    def users_page(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return _to("/login")
        activity = registry.user_activity()
        rows = []
        for u in registry.list_users():
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
        return _page(
            request,
            "users.html",
            session=session,
            page="users",
            rows=rows,
            ordered_outcomes=ordered_outcomes,
        )

    @router.post("/users")
    async def add_user(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return _to("/login")
        try:
            form = await _form(request, session)
            uid = form.get("user_id", "").strip("\r\n") or None
            name = form.get("name", "").strip()
            try:
                info, credential = await run_in_threadpool(gate.add_user, uid, name)
            except UserExists as e:
                raise _Refused(409, str(e)) from e
            except ValueError as e:
                raise _Refused(422, str(e)) from e
        except _Refused as e:
            if e.status == 403:
                return _refused(request, e, session)
            session.flash.append(("error", e.reason))
            return _to("/users")
        log.info("user %s registered (console)", info.user_id)
        session.flash.append(
            (
                "ok",
                f"Registered user {info.user_id}" + (f" ({info.name})" if info.name else "") + ".",
            )
        )
        if credential:
            session.flash.append(("credential", credential))
        return _to("/users")

    async def _set_active(request: Request, active: bool) -> Response:
        session = _session(request)
        if session is None:
            return _to("/login")
        try:
            form = await _form(request, session)
        except _Refused as e:
            return _refused(request, e, session)
        uid = form.get("user_id", "")
        try:
            info = await run_in_threadpool(registry.set_active, uid, active)
        except UserNotFound:
            session.flash.append(("error", f"No user {uid!r}."))
            return _to("/users")
        log.info("user %s %s (console)", uid, info.status)
        session.flash.append(("ok", f"User {uid} is {info.status}."))
        return _to("/users")

    @router.post("/users/revoke")
    async def revoke(request: Request) -> Response:
        return await _set_active(request, False)

    @router.post("/users/activate")
    async def activate(request: Request) -> Response:
        return await _set_active(request, True)

    def _user_param(request: Request) -> str | None:
        user = request.query_params.get("user")
        if user is None or user == "*":
            return None
        return NO_USER if user == "(none)" else user

    def _window(request: Request) -> str:
        window = request.query_params.get("window", DEFAULT_WINDOW)
        return window if window in WINDOWS else DEFAULT_WINDOW

    @router.get("/usage")
    def usage_page(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return _to("/login")
        user = _user_param(request)
        return _page(
            request,
            "usage.html",
            session=session,
            page="usage",
            user=user,
            user_ids=[u.user_id for u in registry.list_users()],
            **_usage_ctx(user, _window(request)),
        )

    @router.get("/usage.svg")
    def usage_svg(request: Request) -> Response:
        if _session(request) is None:
            return Response(status_code=401, headers=SECURITY_HEADERS)
        user, window = _user_param(request), _window(request)
        edges = window_edges(window)
        who = (
            "all queries"
            if user is None
            else "queries without a readable id"
            if user == NO_USER
            else f"user {user}"
        )
        svg = usage_chart_svg(
            edges, registry.usage_over_time(edges, user), f"{who}, last {window}, by outcome (UTC)"
        )
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        return Response(svg, media_type="image/svg+xml", headers=headers)

    @router.get("/audit")
    def audit_page(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return _to("/login")
        q = request.query_params
        try:
            page = max(1, int(q.get("page", "1") or 1))
        except ValueError:
            page = 1
        outcome = q.get("outcome") or None
        try:
            since, until = _parse_time(q.get("since", "")), _parse_time(q.get("until", ""))
        except _Refused as e:
            return _refused(request, e, session)
        user = _user_param(request) if q.get("user") else None
        rows, total = registry.audit_page(
            user, outcome, since, until, (page - 1) * PAGE_SIZE, PAGE_SIZE
        )
        pages = max(1, math.ceil(total / PAGE_SIZE))
        keep = {k: q[k] for k in ("user", "outcome", "since", "until") if q.get(k)}

        def link(p: int) -> str:
            return f"{PREFIX}/audit?" + urlencode({**keep, "page": p})

        return _page(
            request,
            "audit.html",
            session=session,
            page="audit",
            rows=rows,
            total=total,
            page_no=page,
            pages=pages,
            filters=keep,
            outcomes=ordered_outcomes(registry.audit_outcomes()),
            prev_link=link(page - 1) if page > 1 else None,
            next_link=link(page + 1) if page < pages else None,
        )

    @router.get("/model")
    def model_page(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return _to("/login")
        card = getattr(gate.model, "card", None) or {}
        enc_card = dict(gate.generator.card or {})
        enc_card.pop("training", None)  # the encoder's full training config: in its run folder
        return _page(
            request,
            "model.html",
            session=session,
            page="model",
            card=_flatten(card),
            encoder_name=card.get("encoder"),
            encoder=_flatten(enc_card),
            ids=gate.describe_ids(),
            class_names=list(gate.class_names),
            **model_records(Path(run) if run is not None else None),
        )

    return router
