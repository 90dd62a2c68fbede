"""The owner's web console (/console): in process with FastAPI's test client (sessions, CSRF,
pages, the registry's read views), and in a real browser: headless Chromium from Debian's
``chromium`` / ``chromium-driver`` packages driven by Selenium against a real
``activedaemon serve`` on a random port (``.ci/run`` installs both; without them the browser test
is skipped with that reason).

The browser test saves screenshots under its tmp folder, and also into the folder named by
$ACTIVEDAEMON_CONSOLE_SHOTS when set (that is how docs/console.png was made).
"""

import html
import json
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from activedaemon.attacks.base import AttackResult
from activedaemon.attacks.dormancy import _row as dormancy_row
from activedaemon.cli import main
from activedaemon.client import Client, ServiceError, png_bytes
from activedaemon.data import load_dataset
from activedaemon.protect import load_classifier
from activedaemon.runs import write_json
from activedaemon.serve.app import create_app
from activedaemon.serve.authid import AuthIdScheme
from activedaemon.serve.console import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    mount_console,
    usage_chart_svg,
    window_edges,
)
from activedaemon.serve.gate import Gatekeeper
from activedaemon.serve.registry import NO_USER, QueryLog, Registry, sqlite_url

from .conftest import ENCODER, free_port, start_server

ADMIN_KEY = "console-admin-key-0123456789abcdef"
WRONG_KEY = "console-wrong-key-0123456789abcdef"
SHOTS_ENV = "ACTIVEDAEMON_CONSOLE_SHOTS"


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def test_images():
    data = load_dataset("fashion-mnist", size=32, channels=3, limit_train=0, limit_test=16)
    return data.test.images


@pytest.fixture(scope="module")
def served_run(tiny_protected, tmp_path_factory):
    """The toy protected run with its records: a real results.json (`activedaemon evaluate`,
    40 test images) in the run folder and an attack report in a sibling folder (attacks.json as
    the suite writes it, holding a dormancy audit and a gaussian attack; their numbers are made
    up here, the dormancy audit alone takes minutes)."""
    root = tmp_path_factory.mktemp("served")
    run = root / "protected"
    shutil.copytree(tiny_protected, run)
    assert main(["evaluate", "--model", str(run), "--limit", "40"]) == 0
    rows = [
        dormancy_row("runner-up label", 0, "output", 12.0, "chance", 10.0),
        dormancy_row("linear probe, pool 1x1", 1.0, "layer3", 31.5, "random weights", 30.0),
    ]
    dormancy = AttackResult(
        {"runner_up": 12.0, "max_gain": 1.5},
        "every thief within +3",
        "holds",
        table=rows,
        name="dormancy",
    )
    gaussian = AttackResult({"best_accuracy": 9.0}, "<= A_ud + 3 = 13.00", "holds", name="gaussian")
    report = {
        "seed": 0,
        "fast": True,
        "dataset": "fashion-mnist",
        "test_images": 40,
        "attacks": {"dormancy": dormancy.to_dict(), "gaussian": gaussian.to_dict()},
    }
    write_json(root / "attacks" / "attacks.json", report)
    return run


def make_gate(db_url: str, run: Path, generator, **kw) -> Gatekeeper:
    model = load_classifier(run)
    return Gatekeeper(generator, model, Registry(db_url), model.card["class_names"], **kw)


@pytest.fixture
def console(tmp_path, served_run, generator):
    gate = make_gate(sqlite_url(tmp_path / "registry.db"), served_run, generator)
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        yield client, gate
    gate.registry.close()


# -- helpers ------------------------------------------------------------------------------------
def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def sign_in(client: TestClient, key: str = ADMIN_KEY):
    """Sign in through the form; the answer after the redirect."""
    form = client.get("/console/login")
    return client.post("/console/login", data={"csrf": csrf_of(form.text), "key": key})


def user_row(page: str, user_id: str) -> str:
    found = re.search(rf'<tr data-user="{re.escape(html.escape(user_id))}".*?</tr>', page, re.S)
    assert found, f"no row for {user_id!r}"
    return found.group(0)


def cell(row: str, cls: str) -> str:
    return re.sub(
        r"<[^>]+>", " ", re.search(rf'class="[^"]*{cls}[^"]*"[^>]*>(.*?)</td>', row, re.S).group(1)
    ).strip()


def totals(page: str) -> dict[str, int]:
    table = re.search(r'<table class="totals".*?</table>', page, re.S).group(0)
    rows = re.findall(r'<tr data-outcome="([^"]+)">.*?<td class="num">(\d+)</td>', table, re.S)
    return {html.unescape(o): int(n) for o, n in rows}


def predict(client, images: torch.Tensor):
    files = [("images", (f"{i}.png", png_bytes(x), "image/png")) for i, x in enumerate(images)]
    return client.post("/v1/predict", files=files)


def insert_audit(registry: Registry, rows: list[tuple[datetime, str | None, str]]) -> None:
    """Audit rows at given times (the service stamps them with 'now')."""
    with registry.engine.begin() as conn:
        conn.execute(
            QueryLog.__table__.insert(),
            [{"time": t, "user_id": u, "outcome": o, "latency_ms": 1.0} for t, u, o in rows],
        )


PAGES = ["/", "/users", "/usage", "/audit", "/model"]


# -- in process ---------------------------------------------------------------------------------
def test_signed_out_pages_redirect_and_forms_do_nothing(console):
    client, gate = console
    for page in PAGES:
        r = client.get("/console" + page, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/console/login"), page
    assert client.get("/console/usage.svg", follow_redirects=False).status_code == 401
    for path, form in [("/users", {"user_id": "sneaky01"}), ("/users/revoke", {}), ("/logout", {})]:
        r = client.post("/console" + path, data=form, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/console/login"), path
    assert gate.registry.list_users() == []
    r = client.post("/console/login", data={"key": ADMIN_KEY})  # no sign-in CSRF token
    assert r.status_code == 403 and "CSRF" in r.text and SESSION_COOKIE not in client.cookies
    client.cookies.set(LOGIN_COOKIE, "a" * 43, path="/console")
    r = client.post("/console/login", data={"key": ADMIN_KEY, "csrf": "b" * 43})  # mismatched
    assert r.status_code == 403 and SESSION_COOKIE not in client.cookies
    css = client.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for bad in ("../app.py", "..%2Fapp.py", "nope.css", ".hidden.css"):
        assert client.get(f"/console/static/{bad}").status_code == 404, bad


def test_sign_in_cookie_expiry_and_sign_out(console, tmp_path, served_run, generator):
    client, gate = console
    r = sign_in(client, WRONG_KEY)
    assert r.status_code == 401 and "not the admin key" in r.text
    assert SESSION_COOKIE not in client.cookies
    r = client.get("/console/login")
    r = client.post(
        "/console/login", data={"csrf": csrf_of(r.text), "key": ADMIN_KEY}, follow_redirects=False
    )
    assert (r.status_code, r.headers["location"]) == (303, "/console/")
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    attrs = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attrs.keys(), cookie
    assert attrs["samesite"].strip().lower() == "samesite=strict" and "secure" not in attrs
    assert attrs["path"].strip() == "Path=/console" and int(attrs["max-age"].split("=")[1]) > 0
    for page in PAGES:
        r = client.get("/console" + page)
        assert r.status_code == 200 and "Sign out" in r.text, page
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert not re.search(r'(src|href)="(https?:)?//', r.text), page  # every asset is ours
    sid = client.cookies[SESSION_COOKIE]
    r = client.post("/console/logout", data={"csrf": csrf_of(client.get("/console/").text)})
    assert r.url.path == "/console/login" and SESSION_COOKIE not in client.cookies
    client.cookies.set(SESSION_COOKIE, sid, path="/console")  # the old id is dead server-side
    assert client.get("/console/users", follow_redirects=False).status_code == 303

    # Over TLS the cookie is Secure; sessions expire.
    app = FastAPI()
    mount_console(app, gate, ADMIN_KEY, session_seconds=1)
    with TestClient(app, base_url="https://testserver") as tls:
        form = tls.get("/console/login")
        assert "secure" in form.headers["set-cookie"].lower()
        r = tls.post(
            "/console/login",
            data={"csrf": csrf_of(form.text), "key": ADMIN_KEY},
            follow_redirects=False,
        )
        session = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
        assert "secure" in [a.strip().lower() for a in session.split(";")[1:]], session
        assert tls.get("/console/users", follow_redirects=False).status_code == 200
        time.sleep(1.3)
        r = tls.get("/console/users", follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/console/login")


def test_every_form_needs_its_csrf_token(console):
    client, gate = console
    sign_in(client)
    page = client.get("/console/users").text
    good = csrf_of(page)
    gate.registry.add_user("victim01")
    attempts = [
        ("/users", {"user_id": "forged01", "name": "x"}),
        ("/users/revoke", {"user_id": "victim01"}),
        ("/users/activate", {"user_id": "victim01"}),
        ("/logout", {}),
    ]
    for path, form in attempts:
        for token in (None, "", good[:-1] + ("A" if good[-1] != "A" else "B")):
            data = form if token is None else {**form, "csrf": token}
            r = client.post("/console" + path, data=data)
            assert r.status_code == 403 and "CSRF" in r.text, (path, token)
    assert [u.user_id for u in gate.registry.list_users()] == ["victim01"]
    assert gate.registry.get_user("victim01").active
    assert client.get("/console/users", follow_redirects=False).status_code == 200  # still in
    r = client.post("/console/users/revoke", data={"user_id": "victim01", "csrf": good})
    assert r.status_code == 200 and not gate.registry.get_user("victim01").active


def test_console_actions_act_on_the_next_prediction(console, generator, test_images):
    client, gate = console
    sign_in(client)
    csrf = csrf_of(client.get("/console/users").text)
    r = client.post("/console/users", data={"csrf": csrf, "user_id": "Con/s 01", "name": "Eve"})
    assert "Registered user Con/s 01 (Eve)." in r.text
    assert cell(user_row(r.text, "Con/s 01"), "status") == "active"
    r = client.post("/console/users", data={"csrf": csrf, "user_id": "<i>\"x'</", "name": "<b>B"})
    assert "<b>B" not in r.text and "&lt;b&gt;B" in r.text  # names and ids are escaped
    assert '<i>"x' not in r.text and "&lt;i&gt;&#34;x&#39;&lt;/" in r.text
    r = client.post("/console/users", data={"csrf": csrf, "name": "Rand"})
    random_id = html.unescape(re.search(r"Registered user (.{8}) \(Rand\)", r.text).group(1))
    assert gate.registry.get_user(random_id).name == "Rand"
    for uid, why in [("Con/s 01", "already exists"), ("short", "8"), ("caf\u00e9abcd", "ASCII")]:
        r = client.post("/console/users", data={"csrf": csrf, "user_id": uid})
        assert r.status_code == 200 and 'class="flash error"' in r.text and why in r.text, uid
    x = generator.embed(test_images[:3], "Con/s 01")
    assert predict(client, x).status_code == 200
    client.post("/console/users/revoke", data={"csrf": csrf, "user_id": "Con/s 01"})
    assert predict(client, x).status_code == 403
    r = client.post("/console/users/activate", data={"csrf": csrf, "user_id": "Con/s 01"})
    assert "User Con/s 01 is active." in r.text
    assert predict(client, x).status_code == 200
    row = user_row(client.get("/console/users").text, "Con/s 01")
    assert (cell(row, "ok-count"), cell(row, "refused-count")) == ("6", "3")
    assert cell(row, "last").startswith(datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    r = client.post("/console/users/revoke", data={"csrf": csrf, "user_id": "nobody99"})
    assert "No user &#39;nobody99&#39;" in r.text


def test_authenticated_mode_shows_the_credential_once(tmp_path, served_run, generator):
    gate = make_gate(
        sqlite_url(tmp_path / "r.db"),
        served_run,
        generator,
        scheme=AuthIdScheme(20),
        master=b"console-master-secret-0123456789",
    )
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        sign_in(client)
        csrf = csrf_of(client.get("/console/users").text)
        r = client.post("/console/users", data={"csrf": csrf, "name": "Fay"})
        credential = re.search(r'<code id="credential">([^<]+)</code>', r.text).group(1)
        assert credential.startswith("ad1.20.0.")
        assert credential not in client.get("/console/users").text  # shown once
    with gate.registry.engine.connect() as conn:  # and never stored with the session
        stored = conn.exec_driver_sql("SELECT flash, csrf FROM console_sessions").all()
    assert stored and not any(credential in str(row) for row in stored)
    gate.registry.close()


def test_registry_views_filter_page_and_bucket(db_url):
    registry = Registry(db_url)
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    rows = [
        (
            t0 + timedelta(minutes=i),
            "alice001" if i % 3 else None,
            ["ok", "revoked", "some_new_outcome"][i % 3],
        )
        for i in range(30)
    ]
    insert_audit(registry, rows)
    page, total = registry.audit_page(limit=7)
    assert total == 30 and len(page) == 7 and page[0].time == t0 + timedelta(minutes=29)
    page3, _ = registry.audit_page(offset=28, limit=7)
    assert [r.time for r in page3] == [t0 + timedelta(minutes=1), t0]
    only, total = registry.audit_page(user="alice001", outcome="revoked")
    assert total == 10 and {(r.user_id, r.outcome) for r in only} == {("alice001", "revoked")}
    anon, total = registry.audit_page(user=NO_USER)
    assert total == 10 and {r.user_id for r in anon} == {None}
    since, until = t0 + timedelta(minutes=10), t0 + timedelta(minutes=20)
    window, total = registry.audit_page(since=since, until=until)
    assert total == 10 and min(r.time for r in window) == since  # since in, until out
    eastern = timezone(timedelta(hours=-5))  # a zone-aware bound means the same instant
    assert registry.audit_page(since=since.astimezone(eastern), until=until)[1] == 10
    assert registry.audit_outcomes() == ["ok", "revoked", "some_new_outcome"]
    edges = [t0 + timedelta(minutes=10 * i) for i in range(4)]
    assert registry.usage_over_time(edges) == {
        "ok": [4, 3, 3],
        "revoked": [3, 4, 3],
        "some_new_outcome": [3, 3, 4],
    }
    assert registry.usage_over_time(edges, "alice001") == {
        "revoked": [3, 4, 3],
        "some_new_outcome": [3, 3, 4],
    }
    assert registry.usage_over_time(edges[1:3], NO_USER) == {"ok": [3]}
    with pytest.raises(ValueError):
        registry.usage_over_time([t0, t0])
    activity = registry.user_activity()
    assert set(activity) == {"alice001"}
    assert activity["alice001"].usage == {"revoked": 10, "some_new_outcome": 10}
    assert activity["alice001"].last_query == t0 + timedelta(minutes=29)
    registry.close()


def test_usage_and_audit_pages_show_every_outcome(console):
    client, gate = console
    gate.registry.add_user("alice001")
    now = datetime.now(timezone.utc) - timedelta(seconds=5)
    insert_audit(
        gate.registry,
        [
            (
                now - timedelta(seconds=i),
                "alice001" if i % 2 else None,
                "limited" if i < 40 else "brand_new_outcome",
            )
            for i in range(120)
        ],
    )
    gate.registry.log_queries([("alice001", "ok", 2.0)] * 5)
    # One summary row of a refused request counts every image it carried.
    gate.registry.log_refusal("alice001", "revoked", 3.0, images=7, detail="revoked x7")
    sign_in(client)
    assert totals(client.get("/console/usage?window=1h").text) == {
        "ok": 5,
        "revoked": 7,
        "limited": 40,
        "brand_new_outcome": 80,
    }  # known outcomes first
    assert totals(client.get("/console/usage?window=1h&user=alice001").text) == {
        "ok": 5,
        "revoked": 7,
        "limited": 20,
        "brand_new_outcome": 40,
    }
    assert totals(client.get("/console/usage?window=1h&user=(none)").text) == {
        "limited": 20,
        "brand_new_outcome": 40,
    }
    svg = client.get("/console/usage.svg?window=1h&user=alice001")
    assert svg.headers["content-type"] == "image/svg+xml"
    for label in ("ok (5)", "limited (20)", "brand_new_outcome (40)", "user alice001"):
        assert label in svg.text, label
    page = client.get("/console/audit").text
    assert re.search(r"126 rows, page 1 of 3", page)  # 125 + the refusal summary
    assert "<option >brand_new_outcome</option>" in page  # the filter offers what the log holds
    assert page.count("<tr data-outcome=") == 50
    older = html.unescape(re.search(r'href="([^"]+)" id="older"', page).group(1))
    page3 = client.get(
        html.unescape(re.search(r'href="([^"]+)" id="older"', client.get(older).text).group(1))
    ).text
    assert "page 3 of 3" in page3 and page3.count("<tr data-outcome=") == 26
    r = client.get("/console/audit", params={"user": "alice001", "outcome": "brand_new_outcome"})
    assert "40 rows" in r.text and set(re.findall(r'data-outcome="([^"]+)"', r.text)) == {
        "brand_new_outcome"
    }
    older = re.search(r'href="([^"]+)" id="older"', r.text)  # paging keeps the filters
    assert older is None  # 40 rows: one page
    t = (now - timedelta(seconds=9)).strftime("%Y-%m-%dT%H:%M:%S")
    r = client.get("/console/audit", params={"since": t, "user": "(none)"})
    assert "5 rows" in r.text, r.text  # i = 0, 2, 4, 6, 8 (the anonymous ones within 9 s)
    r = client.get("/console/audit", params={"since": "yesterday"})
    assert r.status_code == 400 and "not a time" in r.text


def test_usage_chart_svg_is_text_and_handles_no_data():
    edges = window_edges("1h", datetime(2026, 1, 1, 12, 30, 20, tzinfo=timezone.utc))
    assert len(edges) == 61 and edges[-1] == datetime(2026, 1, 1, 12, 31, tzinfo=timezone.utc)
    empty = usage_chart_svg(edges, {}, "nothing")
    assert empty.lstrip().startswith("<?xml") and "no queries in this window" in empty
    counts = {"zeta_outcome": [1] * 60, "ok": [2] * 60}
    svg = usage_chart_svg(edges, counts, "t")
    assert svg.index("ok (120)") < svg.index("zeta_outcome (60)")  # known outcomes first
    odd = usage_chart_svg(edges, {"a$\\frac{$x": [1] * 60}, "user $\\undefined{$")  # no mathtext
    assert "a$\\frac{$x (60)" in odd and "user $\\undefined{$" in odd


def test_model_page_shows_card_encoder_and_records(console, tmp_path, tiny_protected, generator):
    client, _ = console
    sign_in(client)
    page = client.get("/console/model").text
    card = re.search(r'<table class="kv" id="card">.*?</table>', page, re.S).group(0)
    assert "<th>arch</th><td>resnet18</td>" in card and "<th>protected</th><td>true</td>" in card
    assert '<code id="encoder-name">fashion-mnist-32</code>' in page
    assert "plain 8-character ids" in page
    results = json.loads(
        (Path(re.search(r'id="run-folder">([^<]+)<', page).group(1)) / "results.json").read_text()
    )
    assert f"<th>A_ad</th><td>{results['A_ad']:.4g}</td>" in page
    assert 'data-attack="dormancy"' in page and 'data-attack="gaussian"' in page
    assert "Dormancy: each thief beside its honest alternative" in page
    assert "linear probe, pool 1x1" in page and "random weights" in page
    # A run with no records beside it says so.
    bare_root = tmp_path / "bare"
    shutil.copytree(tiny_protected, bare_root / "protected")
    for stale in ("results.json",):
        (bare_root / "protected" / stale).unlink(missing_ok=True)
    gate = make_gate(sqlite_url(tmp_path / "b.db"), bare_root / "protected", generator)
    with TestClient(create_app(gate, ADMIN_KEY)) as other:
        sign_in(other)
        page = other.get("/console/model").text
        assert 'id="no-results"' in page and 'id="no-reports"' in page
        assert "<th>arch</th><td>resnet18</td>" in page
    gate.registry.close()


def test_the_key_is_never_in_a_page_url_or_log(console, caplog, generator, test_images):
    client, gate = console
    caplog.set_level("DEBUG")
    seen = [sign_in(client, WRONG_KEY), sign_in(client)]
    csrf = csrf_of(client.get("/console/users").text)
    seen.append(client.post("/console/users", data={"csrf": csrf, "user_id": "keyless1"}))
    predict(client, generator.embed(test_images[:2], "keyless1"))
    seen += [client.get("/console" + p) for p in PAGES]
    seen.append(client.get("/console/usage.svg"))
    for r in seen:
        for step in [*r.history, r]:
            blob = step.text + str(step.url) + str(dict(step.headers))
            assert ADMIN_KEY not in blob and WRONG_KEY not in blob, step.url
    assert "console: failed sign-in" in caplog.text and "console: signed in" in caplog.text
    assert ADMIN_KEY not in caplog.text and WRONG_KEY not in caplog.text


# -- in a real browser --------------------------------------------------------------------------
@pytest.fixture
def browser():
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        pytest.skip(
            f"browser test not run: {' and '.join(missing)} not installed "
            "(apt-get install chromium chromium-driver; .ci/run does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_console_in_a_real_browser(browser, served_run, generator, test_images, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    pages: list[str] = []  # every page's source and address, checked for the key at the end

    def go(path: str) -> None:
        d.get(url + "/console" + path)
        pages.append(d.current_url + "\n" + d.page_source)

    def submit(button) -> None:
        # click() does not wait for the navigation: wait until the old page is gone and the new
        # one loaded, or a busy machine reads the old page (a flaky failure seen once here).
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        button.click()
        WebDriverWait(d, 60).until(expected_conditions.staleness_of(button))
        WebDriverWait(d, 60).until(
            lambda drv: drv.execute_script("return document.readyState") == "complete"
        )
        pages.append(d.current_url + "\n" + d.page_source)

    def row(uid: str):
        return d.find_element(By.CSS_SELECTOR, f'tr[data-user="{uid}"]')

    def shot(name: str) -> None:
        d.save_screenshot(str(tmp_path / name))
        if os.environ.get(SHOTS_ENV):
            Path(os.environ[SHOTS_ENV]).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / name, Path(os.environ[SHOTS_ENV]) / name)

    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc, url = start_server(served_run, tmp_path / "registry.db", free_port(), log, ADMIN_KEY)
    admin = httpx.Client(base_url=url, headers={"X-Admin-Key": ADMIN_KEY})
    user = Client(url, "Carol#01", generator)
    try:
        # Signed out: every page leads to the sign-in form; a wrong key is refused.
        go("/users")
        assert d.current_url == url + "/console/login"
        d.find_element(By.ID, "key").send_keys(WRONG_KEY)
        submit(d.find_element(By.ID, "sign-in"))
        assert "not the admin key" in d.find_element(By.ID, "sign-in-error").text
        assert d.get_cookie(SESSION_COOKIE) is None
        # The right key without the form's CSRF token is refused too.
        d.execute_script("document.querySelector('input[name=csrf]').remove()")
        d.find_element(By.ID, "key").send_keys(ADMIN_KEY)
        submit(d.find_element(By.ID, "sign-in"))
        assert "CSRF" in d.find_element(By.ID, "refused").text
        assert d.get_cookie(SESSION_COOKIE) is None
        # Sign in.
        go("/login")
        d.find_element(By.ID, "key").send_keys(ADMIN_KEY)
        submit(d.find_element(By.ID, "sign-in"))
        assert d.current_url == url + "/console/"
        cookie = d.get_cookie(SESSION_COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
        assert cookie["path"] == "/console" and cookie["expiry"] > time.time() + 3600
        assert d.execute_script("return document.cookie") == ""  # HttpOnly: scripts see nothing

        # Add a user with a given id, and one with a random id.
        go("/users")
        d.find_element(By.ID, "user_id").send_keys("Carol#01")
        d.find_element(By.ID, "name").send_keys("Carol")
        submit(d.find_element(By.ID, "add"))
        assert "Registered user Carol#01 (Carol)." in d.find_element(By.CLASS_NAME, "flash").text
        assert row("Carol#01").find_element(By.CLASS_NAME, "status").text == "active"
        d.find_element(By.ID, "name").send_keys("Dan")
        submit(d.find_element(By.ID, "add"))
        flash = d.find_element(By.CLASS_NAME, "flash").text
        dan = re.fullmatch(r"Registered user (.{8}) \(Dan\)\.", flash).group(1)
        assert {u["user_id"] for u in admin.get("/v1/users").json()["users"]} == {"Carol#01", dan}
        assert row("Carol#01").find_element(By.CLASS_NAME, "ok-count").text == "0"

        # Query as Carol: the usage count moves.
        x = test_images[:4]
        assert len(user.predict(x)) == 4
        go("/users")
        assert row("Carol#01").find_element(By.CLASS_NAME, "ok-count").text == "4"
        assert row("Carol#01").find_element(By.CLASS_NAME, "last").text.strip()
        go("/usage?window=1h&user=Carol%2301")
        assert d.find_element(By.CSS_SELECTOR, '#totals tr[data-outcome="ok"] .num').text == "4"
        chart = d.find_element(By.ID, "usage-chart")
        assert d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", chart)

        # Revoke in the console: the next query is refused, and the pages show it.
        go("/users")
        submit(row("Carol#01").find_element(By.TAG_NAME, "button"))
        assert "User Carol#01 is revoked." in d.find_element(By.CLASS_NAME, "flash").text
        assert row("Carol#01").find_element(By.CLASS_NAME, "status").text.startswith("revoked")
        with pytest.raises(ServiceError) as refused:
            user.predict(x)
        assert refused.value.status == 403
        go("/users")
        assert row("Carol#01").find_element(By.CLASS_NAME, "refused-count").text == "4"
        go("/audit")
        d.find_element(By.ID, "f-user").send_keys("Carol#01")
        d.find_element(By.CSS_SELECTOR, "#f-outcome option[value='']")  # "any" is there
        d.find_element(By.XPATH, "//select[@id='f-outcome']/option[.='revoked']").click()
        submit(d.find_element(By.ID, "filter"))
        # One row per image here; a service that audits a refused request as one summary row
        # shows one row of 4 images: count images, not rows.
        rows = d.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
        assert {r.get_attribute("data-outcome") for r in rows} == {"revoked"}
        assert sum(int(r.find_element(By.CLASS_NAME, "images").text) for r in rows) == 4
        go("/usage?window=1h")
        got = {
            e.get_attribute("data-outcome"): e.find_element(By.CLASS_NAME, "num").text
            for e in d.find_elements(By.CSS_SELECTOR, "#totals tr[data-outcome]")
        }
        # The wrong admin key tried at sign-in is audited too (as bad_key).
        assert got.pop("bad_key", None) is not None
        assert got == {"ok": "4", "revoked": "4"}
        shot("console-usage.png")

        # A console form without its CSRF token is refused and changes nothing.
        go("/users")
        form = row("Carol#01").find_element(By.TAG_NAME, "form")
        d.execute_script("arguments[0].querySelector('input[name=csrf]').remove()", form)
        submit(form.find_element(By.TAG_NAME, "button"))
        assert "CSRF" in d.find_element(By.ID, "refused").text
        assert admin.get("/v1/users/Carol%2301").json()["status"] == "revoked"

        # Re-activate: answered again.
        go("/users")
        submit(row("Carol#01").find_element(By.TAG_NAME, "button"))
        assert row("Carol#01").find_element(By.CLASS_NAME, "status").text == "active"
        assert len(user.predict(x)) == 4
        go("/users")
        assert row("Carol#01").find_element(By.CLASS_NAME, "ok-count").text == "8"
        shot("console.png")

        # The model page: card, encoder, results.json and the report beside the run.
        go("/model")
        assert "resnet18" in d.find_element(By.ID, "card").text
        assert d.find_element(By.ID, "encoder-name").text == ENCODER
        assert "A_ad" in d.find_element(By.ID, "results").text
        assert d.find_elements(By.CSS_SELECTOR, 'tr[data-attack="dormancy"]')
        go("/")

        # Sign out: the session is gone in the browser and on the server.
        sid = d.get_cookie(SESSION_COOKIE)["value"]
        submit(d.find_element(By.ID, "sign-out"))
        assert d.current_url == url + "/console/login" and d.get_cookie(SESSION_COOKIE) is None
        d.add_cookie({"name": SESSION_COOKIE, "value": sid, "path": "/console"})
        go("/users")
        assert d.current_url == url + "/console/login"
    finally:
        admin.close()
        user.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    for page in pages:
        assert ADMIN_KEY not in page and WRONG_KEY not in page
    server_log = log_path.read_text()
    assert "GET /console/users" in server_log and "console: signed in" in server_log
    assert ADMIN_KEY not in server_log and WRONG_KEY not in server_log
