"""The service under a hostile crowd, in process: every request is charged to its address when its
headers arrive, a throttled client's refusals are counted into one audit row per address and
interval, owner endpoints check the key before they read the body, wrong admin keys are rationed
and audited, and the docs pages carry security headers. The same floods through a real proxy are
in ``test_deploy_proxy``; their timings in ``benchmarks/serve_crowd.py``."""

import asyncio
import hashlib
import re
import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from activedaemon.serve.app import create_app
from activedaemon.serve.console import mount_console
from activedaemon.serve.gate import Limits
from activedaemon.serve.guard import KeyGuard
from activedaemon.serve.policy import ServiceSettings
from tests.test_serve import ADMIN, ADMIN_KEY, make_gate, post_images

MULTIPART = "multipart/form-data; boundary=b"


async def call(app, method: str, path: str, headers=(), body: bytes = b"", client="10.0.0.1"):
    """One request straight to the ASGI app: (status, whether the app read the body)."""
    read = []
    sent = []

    async def receive():
        read.append(True)
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers]
    hdrs.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "headers": hdrs, "client": (client, 5), "server": ("t", 80)}  # fmt: skip
    await app(scope, receive, send)
    return sent[0]["status"], bool(read)


def parts(n: int) -> bytes:
    one = b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\nx\r\n'
    return one * n + b"--b--\r\n"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_early_refusals_are_charged_and_counted_not_logged_each(db_url, tiny_protected, generator,
                                                                test_images):  # fmt: skip
    gate = make_gate(db_url, tiny_protected, generator, limits=Limits(max_images=4))
    uid = gate.registry.add_user().user_id
    settings = ServiceSettings(client_images_per_s=0.01, client_burst=12, refusal_interval_s=60)
    app = create_app(gate, ADMIN_KEY, settings)
    flooder = [("content-type", MULTIPART)]

    async def flood():
        out = [await call(app, "POST", "/v1/predict", flooder, parts(5))]  # 413: 5 images
        out += [await call(app, "POST", "/v1/predict", flooder, b"garbage") for _ in range(6)]
        out += [await call(app, "POST", "/v1/predict", flooder, parts(1)) for _ in range(30)]
        other = await call(app, "POST", "/v1/predict", flooder, b"garbage", client="10.0.0.2")
        await app.state.refusals.flush()
        return out, other

    out, other = asyncio.run(flood())
    statuses = [s for s, _ in out]
    # 5 images + 6 requests + 1 = the burst of 12; everything after is refused unread.
    assert statuses[:8] == [413] + [400] * 6 + [415], statuses
    assert statuses[8:] == [429] * 29 and not any(read for _, read in out[8:]), out
    assert other[0] == 400  # another address is not charged for this one
    rows = gate.registry.audit(100)
    mine = [r for r in rows if r.client == "10.0.0.1"]
    # The first refusal in full, the other 36 counted into one summary row.
    assert len(mine) == 2 and sum(r.requests for r in mine) == 37, mine
    summary = next(r for r in mine if r.requests > 1)
    assert summary.outcome == "rate_limited" and "rate_limited=29" in summary.detail, summary
    assert [r.client for r in rows if r.client != "10.0.0.1"] == ["10.0.0.2"]
    assert gate.registry.count_refused_requests() == 38
    # A registered user elsewhere is served.
    with TestClient(app) as client:
        assert post_images(client, generator.embed(test_images[0][:1], uid)).status_code == 200
    gate.registry.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_owner_endpoints_check_the_key_before_the_body(db_url, tiny_protected, generator):
    gate = make_gate(db_url, tiny_protected, generator)
    app = create_app(gate, ADMIN_KEY, ServiceSettings(small_body_bytes=1024))
    json_type = [("content-type", "application/json")]
    big = b'{"name": "' + b"x" * 5000 + b'"}'

    async def scenario():
        wrong = await call(app, "POST", "/v1/users", [*json_type, ("x-admin-key", "no")], big)
        missing = await call(app, "POST", "/v1/users", json_type, big)
        metrics = await call(app, "GET", "/metrics", [("authorization", "Bearer nope")])
        too_big = await call(app, "POST", "/v1/users", [*json_type, *ADMIN.items()], big)
        fine = await call(app, "POST", "/v1/users", [*json_type, *ADMIN.items()], b"{}")
        return wrong, missing, metrics, too_big, fine

    wrong, missing, metrics, too_big, fine = asyncio.run(scenario())
    assert wrong == (401, False) and missing == (401, False) and metrics[0] == 401
    assert too_big[0] == 413 and fine[0] == 201
    rows = [r for r in gate.registry.audit(10) if r.outcome == "bad_key"]
    assert len(rows) == 3 and {r.client for r in rows} == {"10.0.0.1"}, rows
    assert "POST /v1/users" in rows[-1].detail and "GET /metrics" in rows[0].detail
    assert gate.registry.count_users() == 1
    gate.registry.close()


def test_wrong_keys_are_rationed_per_address_and_in_all():
    now = [0.0]
    keys = KeyGuard(ADMIN_KEY, per_client_per_s=10, total_per_s=100, clock=lambda: now[0])
    verdicts = [keys.check("a", "guess")[0] for _ in range(15)]
    assert verdicts == ["wrong"] * 10 + ["throttled"] * 5
    assert keys.check("a", ADMIN_KEY)[0] == "throttled"  # not even the right key is looked at
    assert keys.check("b", ADMIN_KEY) == ("ok", 0.0)  # another address; a right key costs nothing
    checked = sum(keys.check(f"c{i}", "guess")[0] == "wrong" for i in range(200) for _ in range(10))
    assert checked == 90  # 100 in all, 10 of them from "a"
    now[0] = 1.0  # a second later: 10 more for each address, 100 more in all
    assert [keys.check("a", "guess")[0] for _ in range(11)] == ["wrong"] * 10 + ["throttled"]
    assert not keys.matches("") and not keys.matches(None) and keys.matches(ADMIN_KEY)
    # With 4 worker processes each checks a quarter: the service as a whole stays at 10 / 100.
    quarter = KeyGuard(ADMIN_KEY, 10, 100, workers=4, clock=lambda: now[0])
    assert sum(quarter.check("a", "guess")[0] == "wrong" for _ in range(20)) == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_key_guessing_through_the_api_is_rationed_and_audited(db_url, tiny_protected, generator):
    gate = make_gate(db_url, tiny_protected, generator)
    settings = ServiceSettings(key_attempts_per_s=0.01, key_attempts_total_per_s=100)
    with TestClient(create_app(gate, ADMIN_KEY, settings)) as client:
        statuses = [
            client.get("/v1/users", headers={"X-Admin-Key": f"guess-{i}"}).status_code
            for i in range(5)
        ]
        assert statuses == [401, 429, 429, 429, 429], statuses
        assert client.get("/v1/users", headers=ADMIN).status_code == 429  # not even looked at
        rows = gate.registry.audit(10)
        assert [r.outcome for r in rows] == ["key_throttled"] * 5 + ["bad_key"], rows
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert metrics.status_code == 429  # the same address, still throttled
    gate.registry.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_docs_pages_carry_security_headers(db_url, tiny_protected, generator):
    gate = make_gate(db_url, tiny_protected, generator)
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            r = client.get(page)
            assert r.status_code == 200, page
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, csp
            assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0], csp
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["referrer-policy"] == "no-referrer"
            if "<script>" in r.text:
                assert "'sha256-" in csp, csp
        assert "content-security-policy" not in client.get("/healthz").headers
    gate.registry.close()


# -- the console under --workers and restarts ------------------------------------------------------
def console_sign_in(client) -> None:
    form = client.get("/console/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    r = client.post("/console/login", data={"csrf": csrf, "key": ADMIN_KEY}, follow_redirects=False)
    assert r.status_code == 303, r.text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_console_sessions_live_in_the_registry(db_url, tiny_protected, generator):
    """One sign-in works on every process that shares the registry (another app here stands for
    another worker, or the service after a restart); only a hash of the id is stored; sessions
    end after their idle time and at sign-out everywhere."""
    gate = make_gate(db_url, tiny_protected, generator)
    other = make_gate(db_url, tiny_protected, generator)  # its own connections
    with TestClient(create_app(gate, ADMIN_KEY)) as first:
        console_sign_in(first)
        sid = first.cookies["ad_console"]
    with TestClient(create_app(other, ADMIN_KEY)) as second:
        second.cookies.set("ad_console", sid, path="/console")
        page = second.get("/console/users", follow_redirects=False)
        assert page.status_code == 200, page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = second.post("/console/users", data={"csrf": csrf, "user_id": "worker02"})
        assert r.status_code == 200 and "Registered user worker02" in r.text
    with gate.registry.engine.connect() as conn:
        stored = conn.execute(text("SELECT sid_hash FROM console_sessions")).scalars().all()
    assert stored == [hashlib.sha256(sid.encode()).hexdigest()] and sid not in stored
    # Idle for longer than the idle time: signed out.
    app = FastAPI()
    mount_console(app, gate, ADMIN_KEY, idle_seconds=0.5)
    with TestClient(app) as client:
        console_sign_in(client)
        assert client.get("/console/users", follow_redirects=False).status_code == 200
        time.sleep(0.7)
        assert client.get("/console/users", follow_redirects=False).status_code == 303
    other.registry.close()
    gate.registry.close()


REVIEW_QUERIES = [
    {"page": "99999999999999999999"},
    {"since": "0001-01-01T00:00:00+14:00"},
    {"until": "9999-12-31T23:59:59-14:00"},
    {"page": "-3", "since": "9999-12-31T23:59:59", "until": "0001-01-01"},
    {"user": "x" * 5000, "outcome": "y" * 5000, "window": "\x00"},
]
QUERY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["99999999999999999999", "0", "-1", "1e9", "0001-01-01T00:00:00+14:00", "(none)", "*",
     "9999-12-31T23:59:59-14:00", "2026-01-01T00:00", "NaN"]
)  # fmt: skip
QUERIES = st.dictionaries(
    st.sampled_from(["page", "since", "until", "user", "outcome", "window"]), QUERY_TEXT
)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_console_list_pages_never_fail_on_a_query_string(db_url, tiny_protected, generator):
    gate = make_gate(db_url, tiny_protected, generator)
    gate.registry.add_user("alice001")
    gate.registry.log_refusal(None, "bad_input", 1.0, 1, "400 bad_request", "10.0.0.1")
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        console_sign_in(client)
        for query in REVIEW_QUERIES:
            for page in ("/console/audit", "/console/users", "/console/usage", "/console/"):
                r = client.get(page, params=query)
                assert r.status_code in (200, 400), (page, query, r.text[-300:])
        last = client.get("/console/audit", params={"page": "99999999999999999999"})
        assert "page 1 of 1" in last.text and 'data-outcome="bad_input"' in last.text

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
        @given(query=QUERIES, page=st.sampled_from(["/audit", "/users", "/usage", "/"]))
        def no_500(query, page):
            r = client.get("/console" + page, params=query)
            assert r.status_code in (200, 400), (page, query, r.text[-300:])

        no_500()
    gate.registry.close()


def test_refusals_arriving_together_make_one_row_and_a_summary():
    """Refusals that arrive while the first one's row is being written are counted, not each
    written (the interval starts before the write)."""
    import threading

    from activedaemon.serve.guard import RefusalLog

    class SlowRegistry:
        def __init__(self):
            self.rows, self.lock = [], threading.Lock()

        def log_refusal(self, user_id, outcome, ms, images, detail, client=None, requests=1):
            time.sleep(0.05)
            with self.lock:
                self.rows.append((client, outcome, requests))

    registry = SlowRegistry()
    refusals = RefusalLog(registry, interval_s=60)

    async def crowd():
        started = time.perf_counter()
        done = await asyncio.gather(
            *(refusals.refuse(f"10.0.0.{i % 2}", started, 0, "busy", "x") for i in range(40))
        )
        assert all(done)
        assert len(registry.rows) == 2  # one per address so far
        await refusals.flush()

    asyncio.run(crowd())
    assert sorted(registry.rows) == [("10.0.0.0", "busy", 1), ("10.0.0.0", "busy", 19),
                                     ("10.0.0.1", "busy", 1), ("10.0.0.1", "busy", 19)]  # fmt: skip


SCHEMA_CHANGES = [
    "DROP TRIGGER query_log_no_delete",
    "DROP TABLE query_log",
    "ALTER TABLE query_log RENAME TO old_log",
    "PRAGMA writable_schema = ON",
    "CREATE TRIGGER hide BEFORE INSERT ON query_log BEGIN SELECT RAISE(IGNORE); END",
]


def test_the_services_sqlite_connections_cannot_touch_the_audit_triggers(tmp_path):
    from sqlalchemy import exc as sa_exc

    from activedaemon.serve.registry import Registry, sqlite_url

    registry = Registry(sqlite_url(tmp_path / "r.db"))
    registry.log_refusal(None, "bad_input", 1.0, 1, "x", "10.0.0.1")
    for engine in (registry.engine, registry._audit_engine):
        for sql in SCHEMA_CHANGES:
            with pytest.raises(sa_exc.DBAPIError, match="not authorized"), engine.begin() as c:
                c.execute(text(sql))
    registry.log_refusal(None, "bad_input", 1.0, 1, "y", "10.0.0.1")
    registry.create_session("h" * 64, "c", datetime.now(timezone.utc) + timedelta(hours=1))
    registry.drop_session("h" * 64)
    assert registry.count_audit() == 2
    registry.close()
    assert Registry(sqlite_url(tmp_path / "r.db")).count_audit() == 2  # opens (migrated) again
