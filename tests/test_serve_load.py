"""The service under load, in process: dynamic batching keeps every answer to its own request,
quotas (429 + Retry-After, audited), the cap on requests in flight, the body read timeout,
Prometheus metrics and the offline /docs. Timings are measured in benchmarks/serve_load.py, not
asserted here."""

import asyncio

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from activedaemon.client import png_bytes
from activedaemon.serve.app import create_app
from activedaemon.serve.gate import FORBIDDEN_REASON
from activedaemon.serve.policy import ServiceSettings, TokenBuckets
from tests.test_serve import ADMIN, ADMIN_KEY, make_gate, model_answers, post_images


def files_of(images: torch.Tensor) -> list:
    return [("images", (f"{i}.png", png_bytes(x), "image/png")) for i, x in enumerate(images)]


async def post_all(app, requests: list[list], client_hosts: list[str] | None = None) -> list:
    """POST every request to /v1/predict at once (one ASGI app, concurrent coroutines)."""
    hosts = client_hosts or ["127.0.0.1"] * len(requests)

    async def one(files, host):
        transport = httpx.ASGITransport(app=app, client=(host, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.post("/v1/predict", files=files)

    return await asyncio.gather(*(one(f, h) for f, h in zip(requests, hosts, strict=True)))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_batched_requests_get_their_own_answers(db_url, tiny_protected, generator, test_images):
    gate = make_gate(db_url, tiny_protected, generator)
    reg = gate.registry
    alice, bob, carol = (reg.add_user().user_id for _ in range(3))
    reg.set_active(carol, False)
    x = test_images[0][:12]
    a, b, c = (
        generator.embed(x[:3], alice),
        generator.embed(x[3:4], bob),
        generator.embed(x[4:6], carol),
    )
    clean, mixed = x[6:8], torch.cat([generator.embed(x[8:9], alice), x[9:10]])
    more_a = generator.embed(x[10:12], alice)
    requests = [a, clean, b, c, mixed, more_a]
    expected = [200, 403, 200, 403, 403, 200]
    # A long wait so that all six share one pass; the worker runs them as one batch.
    app = create_app(gate, ADMIN_KEY, ServiceSettings(batch_wait_ms=300))
    responses = asyncio.run(post_all(app, [files_of(r) for r in requests]))
    assert [r.status_code for r in responses] == expected, [r.text for r in responses]
    for images, user, r in ((a, alice, responses[0]), (b, bob, responses[2]),
                            (more_a, alice, responses[5])):  # fmt: skip
        preds = r.json()["predictions"]
        assert [p["user_id"] for p in preds] == [user] * len(images)
        probs = model_answers(tiny_protected, images)
        assert torch.allclose(torch.tensor([p["probabilities"] for p in preds]), probs, atol=1e-5)
    for r in responses[1::2][:2]:
        assert r.json()["reason"] == FORBIDDEN_REASON
    metrics = TestClient(app).get("/metrics", headers=ADMIN).text
    # Six requests (and the probes of the five with several images) in at most 3 passes.
    passes = next(x for x in metrics.splitlines() if x.startswith("activedaemon_batch_requests_c"))
    assert float(passes.split()[1]) <= 3, metrics
    rows = [(r.user_id, r.outcome, r.images) for r in reg.audit(100)]
    assert sorted(rows, key=str) == sorted(
        [(alice, "ok", 1)] * 5 + [(bob, "ok", 1), (None, "undecodable", 2),
         (carol, "revoked", 2), (None, "undecodable", 2)], key=str)  # fmt: skip
    reg.close()


@pytest.mark.parametrize("batching", [True, False])
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_quotas_answer_429_with_retry_after_and_are_audited(db_url, tiny_protected, generator,
                                                             test_images, batching):  # fmt: skip
    gate = make_gate(db_url, tiny_protected, generator,
                     user_quota=TokenBuckets(rate=0.01, burst=4))  # fmt: skip
    heavy, light = gate.registry.add_user().user_id, gate.registry.add_user().user_id
    x = test_images[0][:4]
    settings = ServiceSettings(batching=batching, client_images_per_s=0.01, client_burst=6)
    with TestClient(create_app(gate, ADMIN_KEY, settings)) as client:
        assert post_images(client, generator.embed(x[:3], heavy)).status_code == 200
        r = post_images(client, generator.embed(x[:2], heavy))  # 3 + 2 > the user's burst of 4
        assert (r.status_code, r.json()["error"]) == (429, "rate_limited"), r.text
        assert int(r.headers["retry-after"]) >= 1
        assert post_images(client, generator.embed(x[:1], light)).status_code == 200
        row = gate.registry.audit(2)[1]
        assert (row.user_id, row.outcome, row.images) == (heavy, "rate_limited", 2)
        # The client has spent 3 + 2 + 1 = 6 images: its next request is refused unread.
        r = post_images(client, generator.embed(x[:1], light))
        assert (r.status_code, r.json()["error"]) == (429, "rate_limited"), r.text
        assert int(r.headers["retry-after"]) >= 1
        row = gate.registry.audit(1)[0]
        assert (row.user_id, row.outcome) == (None, "rate_limited") and "client" in row.detail
    assert gate.registry.usage(heavy) == {"ok": 3, "rate_limited": 2}


def test_token_buckets_refill_and_forget():
    now = [0.0]
    buckets = TokenBuckets(rate=2, burst=4, max_keys=2, clock=lambda: now[0])
    assert buckets.take("a", 4) == 0 and buckets.take("a") == pytest.approx(0.5)
    now[0] = 0.5
    assert buckets.take("a") == 0 and buckets.wait("a") == pytest.approx(0.5)
    assert buckets.take("b", 10, overdraw=True) == 0 and buckets.wait("b") == pytest.approx(3.5)
    assert buckets.take("c", 9) == float("inf")  # more than the burst can ever hold
    now[0] = 100
    buckets.take("c")  # a third key: the full buckets are forgotten
    assert set(buckets._buckets) == {"c"}


async def _stalled_post(app, sent: list, release: asyncio.Event, path="/v1/predict",
                        client="127.0.0.9") -> None:  # fmt: skip
    """A multipart upload that sends its headers and part of its body, then stalls."""
    body = b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
    chunks = [{"type": "http.request", "body": body, "more_body": True}]

    async def receive():
        if chunks:
            return chunks.pop()
        await release.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
             "client": (client, 5), "server": ("t", 80)}  # fmt: skip
    await app(scope, receive, send)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_stalled_uploads_time_out_and_the_inflight_caps_hold(db_url, tiny_protected, generator,
                                                              test_images):  # fmt: skip
    """One address holds at most its share of the slots (here 2 of 4); all addresses together
    at most the cap; stalled bodies end at the body timeout."""
    gate = make_gate(db_url, tiny_protected, generator)
    settings = ServiceSettings(max_inflight=4, client_inflight_share=0.5, body_timeout_s=1.5)
    app = create_app(gate, ADMIN_KEY, settings)
    uid = gate.registry.add_user().user_id
    good = files_of(generator.embed(test_images[0][:1], uid))

    async def scenario():
        release = asyncio.Event()
        stalled = [[] for _ in range(5)]
        hosts = ["127.0.0.9"] * 3 + ["127.0.0.8"] * 2
        tasks = []
        for s, host in zip(stalled, hosts, strict=True):
            tasks.append(asyncio.create_task(_stalled_post(app, s, release, client=host)))
            await asyncio.sleep(0.05)
            if len(tasks) == 3:  # .9 holds its 2; another address still gets in
                served = (await post_all(app, [good]))[0]
        await asyncio.sleep(0.1)  # 4 stalled uploads in flight now: the cap
        busy = (await post_all(app, [good]))[0]
        await asyncio.gather(*tasks)  # the body timeout ends them
        after = (await post_all(app, [good]))[0]
        release.set()
        return stalled, served, busy, after

    stalled, served, busy, after = asyncio.run(scenario())
    assert served.status_code == 200, served.text
    assert (busy.status_code, busy.json()["error"]) == (503, "busy"), busy.text
    assert busy.headers["retry-after"] == "1"
    statuses = [messages[0]["status"] for messages in stalled]
    assert statuses == [408, 408, 429, 408, 408], statuses
    assert after.status_code == 200, after.text
    rows = gate.registry.audit(20)
    assert sorted(r.outcome for r in rows) == ["busy"] * 2 + ["ok"] * 2 + ["timeout"] * 4
    assert {r.client for r in rows if r.outcome == "timeout"} == {"127.0.0.9", "127.0.0.8"}
    gate.registry.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_metrics_and_offline_docs(db_url, tiny_protected, generator, test_images):
    gate = make_gate(db_url, tiny_protected, generator)
    uid = gate.registry.add_user().user_id
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        post_images(client, generator.embed(test_images[0][:2], uid))
        post_images(client, test_images[0][:2])
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        text = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
        assert 'activedaemon_predict_requests_total{outcome="ok"} 1.0' in text, text
        assert 'activedaemon_predict_requests_total{outcome="undecodable"} 1.0' in text
        assert "activedaemon_predict_latency_seconds_count 2.0" in text
        assert "activedaemon_registry_errors_total 0.0" in text
        for page in ("/docs", "/redoc"):
            html = client.get(page).text
            assert "cdn" not in html.lower() and "https://" not in html, html
            for asset in [p.split('"')[0] for p in html.split('src="')[1:]]:
                assert client.get(asset).status_code == 200, asset
    gate.registry.close()


@pytest.mark.parametrize("batching", [True, False])
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_refused_first_image_spares_decoding_the_rest(db_url, tiny_protected, generator,
                                                         test_images, batching):  # fmt: skip
    gate = make_gate(db_url, tiny_protected, generator)
    uid = gate.registry.add_user().user_id
    seen = []
    decode_probs = gate.generator.decode_probs

    def counting(images):
        seen.append(len(images))
        return decode_probs(images)

    gate.generator.decode_probs = counting
    x = test_images[0][:8]
    with TestClient(create_app(gate, ADMIN_KEY, ServiceSettings(batching=batching))) as client:
        r = post_images(client, x)  # 8 clean images: an unauthenticated batch
        assert r.status_code == 403 and sum(seen) == 1, seen
        row = gate.registry.audit(1)[0]
        assert (row.outcome, row.images, row.detail) == (
            "undecodable", 8, "image 0 undecodable; undecodable=1 unexamined=7")  # fmt: skip
        seen.clear()
        assert post_images(client, generator.embed(x, uid)).status_code == 200
        assert sum(seen) == 1 + 8, seen  # the probe, then the whole request
