"""The service under a hostile crowd, in process: every request is charged to its address when its
headers arrive, a throttled client's refusals are counted into one audit row per address and
interval, owner endpoints check the key before they read the body, wrong admin keys are rationed
and audited, and the docs pages carry security headers. The same floods through a real proxy are
in ``test_deploy_proxy``; their timings in ``benchmarks/serve_crowd.py``."""

import asyncio

import pytest
from fastapi.testclient import TestClient

from activedaemon.serve.app import create_app
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
