"""The reference deployment end to end: nginx with the shipped deploy/nginx/activedaemon.conf in
front of `activedaemon serve --workers 2` (on PostgreSQL when ACTIVEDAEMON_TEST_PG_URL is set,
else SQLite), the review's floods replayed through the proxy beside one registered user, and the
console across workers and a restart. Correctness only: no 5xx, every answer of the service
audited, the user served. The user's latencies are printed by benchmarks/serve_crowd.py."""

import os
import re
import time

import pytest

from activedaemon.client import png_bytes
from activedaemon.serve.registry import Registry
from tests.conftest import PG_ENV
from tests.proxy_stack import (
    FLOODS,
    Stack,
    Tally,
    finish_flood,
    nginx_binary,
    start_flood,
    user_loop,
)

pytestmark = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (apt-get install nginx; .ci/run does)"
)
BACKEND = "postgresql" if os.environ.get(PG_ENV) else "sqlite"
ADDRESSES = {name: f"127.0.0.{i + 2}" for i, name in enumerate(FLOODS)}
USER_ADDRESS, OWNER_ADDRESS = "127.0.0.20", "127.0.0.21"


@pytest.mark.parametrize("db_url", [BACKEND], indirect=True)
def test_floods_through_the_proxy(db_url, tiny_protected, generator, test_images, tmp_path):
    stack = Stack(tiny_protected, db_url, tmp_path, workers=2)
    try:
        stack.start_service()
        stack.start_nginx()
        with stack.client(OWNER_ADDRESS) as owner:
            r = owner.post("/v1/users", json={"name": "alice"}, headers={"X-Admin-Key": stack.key})
            assert r.status_code == 201, r.text
            uid = r.json()["user_id"]
            # A client's own X-Forwarded-For is replaced by the proxy: it cannot pose as another.
            r = owner.get(
                "/v1/users", headers={"X-Admin-Key": "wrong", "X-Forwarded-For": "1.2.3.4"}
            )
            assert r.status_code == 401
        files = [("images", ("a.png", png_bytes(generator.embed(test_images[0][:1], uid)[0]),
                             "image/png"))]  # fmt: skip

        user = Tally()
        user_loop(stack, USER_ADDRESS, files, time.monotonic() + 2, user)  # quiet
        tallies = {}
        for name, flood in FLOODS.items():
            tally = Tally()
            deadline = time.monotonic() + 3
            flooding = start_flood(flood, stack, ADDRESSES[name], deadline)
            user_loop(stack, USER_ADDRESS, files, deadline, user)
            finish_flood(flooding, tally)
            tallies[name] = tally
        # The console: one sign-in, pages and posts on whichever worker, then a restart.
        with stack.client(OWNER_ADDRESS, follow_redirects=True) as browser:
            form = browser.get("/console/login").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
            r = browser.post("/console/login", data={"csrf": csrf, "key": stack.key})
            assert r.status_code == 200 and "Sign out" in r.text, r.text[-500:]
            for i in range(20):
                page = browser.get("/console/users")
                assert page.status_code == 200 and "Sign out" in page.text, i
                csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
                r = browser.post("/console/users", data={"csrf": csrf, "name": f"n{i}"})
                assert r.status_code == 200 and "Registered user" in r.text, (i, r.text[-500:])
            stack.stop_service()
            stack.start_service()
            page = browser.get("/console/users")
            assert page.status_code == 200 and "Sign out" in page.text
        time.sleep(2.5)  # the refusal summaries of the last interval
    finally:
        stack.stop()

    registry = Registry(db_url)
    try:
        assert user.statuses() == {200: len(user.latencies)}, user.statuses()
        assert registry.usage(uid).get("ok", 0) == len(user.latencies)
        for name, tally in tallies.items():
            statuses = tally.statuses()
            assert not [s for s in statuses if s >= 500], (name, statuses)
            rows = [r for r in registry.audit(100_000) if r.client == ADDRESSES[name]]
            answered = sum(tally.service.values())
            # Every answer the service gave this address is in the audit log (the proxy's own
            # refusals are in its access log).
            assert sum(r.requests for r in rows) == answered, (name, tally, rows[:3])
        assert sum(tallies["early refusals"].statuses().values()) > 0
        assert tallies["large owner bodies"].proxy[413] > 0
        assert tallies["admin-key guessing"].statuses()[429] > 0
        assert len(registry.list_users()) == 21
        assert not [r for r in registry.audit(100_000) if r.client == "1.2.3.4"]
    finally:
        registry.close()
