"""The identity-checked service end to end: FastAPI's test client, a toy protected model trained
in the session, and the registry on SQLite and on a real PostgreSQL server.

The PostgreSQL runs need ACTIVEDAEMON_TEST_PG_URL (``.ci/run`` starts a server and sets it);
without it they are skipped with that reason, and pytest's summary says so.
"""

import io
import logging

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import create_engine, text

from activedaemon.client import Client, png_bytes
from activedaemon.protect import load_classifier
from activedaemon.serve.app import create_app
from activedaemon.serve.authid import AuthIdScheme, Credential, image_hash, user_key
from activedaemon.serve.gate import FORBIDDEN_REASON, Gatekeeper, Limits
from activedaemon.serve.registry import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Registry,
    UserExists,
    migrate,
    schema_version,
)
from activedaemon.serve.server import read_secret

ADMIN_KEY = "test-admin-key-0123456789abcdef"
ADMIN = {"X-Admin-Key": ADMIN_KEY}
ENCODER = "fashion-mnist-32"


def make_gate(db_url, run, generator, **kw) -> Gatekeeper:
    model = load_classifier(run)
    return Gatekeeper(generator, model, Registry(db_url), model.card["class_names"], **kw)


@pytest.fixture
def service(db_url, tiny_protected, generator):
    gate = make_gate(db_url, tiny_protected, generator)
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        yield client, gate
    gate.registry.close()


def post_images(client, images: torch.Tensor):
    files = [("images", (f"{i}.png", png_bytes(x), "image/png")) for i, x in enumerate(images)]
    return client.post("/v1/predict", files=files)


def assert_denied(response, reason_part: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert set(body) == {"error", "reason"}, body  # no model output of any kind
    assert reason_part in body["reason"], body


def model_answers(run, images):
    with torch.inference_mode():
        return torch.softmax(load_classifier(run)(images), 1)


def test_registered_user_gets_the_right_labels(service, tiny_protected, generator, test_images):
    client, gate = service
    x, y = test_images
    r = client.post("/v1/users", json={"name": "alice"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    uid = r.json()["user_id"]
    assert len(uid) == 8 and r.json()["status"] == "active"
    x_a = generator.embed(x, uid)
    probs = model_answers(tiny_protected, x_a)
    right = (probs.argmax(1) == y).nonzero().flatten()[:16]
    assert len(right) == 16, "the toy model must get some authorized images right"
    r = post_images(client, x_a[right])
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == y[right].tolist()
    names = gate.class_names
    assert [p["class_name"] for p in preds] == [names[i] for i in y[right].tolist()]
    assert {p["user_id"] for p in preds} == {uid}
    got = torch.tensor([p["probabilities"] for p in preds])
    assert torch.allclose(got, probs[right], atol=1e-5)
    audit = gate.registry.audit(100)
    assert [(a.user_id, a.outcome, a.images) for a in audit] == [(uid, "ok", 1)] * 16
    assert all(a.latency_ms > 0 for a in audit)
    detail = client.get(f"/v1/users/{uid}", headers=ADMIN).json()
    assert detail["usage"] == {"ok": 16} and detail["name"] == "alice"


def test_unknown_clean_revoked_and_mixed_queries_are_denied(service, generator, test_images):
    client, gate = service
    x, _ = test_images
    x = x[:4]
    uid = client.post("/v1/users", json={"user_id": "Rt5/kq 9"}, headers=ADMIN).json()["user_id"]
    assert uid == "Rt5/kq 9"
    # One reason for every refusal (no oracle for the registry); the audit log has the detail.
    assert_denied(post_images(client, generator.embed(x, "NotRegd1")), FORBIDDEN_REASON)
    assert_denied(post_images(client, x), FORBIDDEN_REASON)
    authorized = generator.embed(x, uid)
    assert post_images(client, authorized).status_code == 200
    mixed = torch.cat([authorized[:2], x[2:]])  # one clean image denies the whole batch
    assert_denied(post_images(client, mixed), FORBIDDEN_REASON)
    r = client.post(f"/v1/users/{uid}/revoke", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["revoked_at"]
    assert_denied(post_images(client, authorized), FORBIDDEN_REASON)  # the very next request
    assert client.post(f"/v1/users/{uid}/activate", headers=ADMIN).json()["status"] == "active"
    assert post_images(client, authorized).status_code == 200
    rows = [(a.user_id, a.outcome, a.images) for a in reversed(gate.registry.audit(100))]
    assert rows == (
        [("NotRegd1", "unknown", 4), (None, "undecodable", 4)] + [(uid, "ok", 1)] * 4
        + [(None, "undecodable", 4), (uid, "revoked", 4)] + [(uid, "ok", 1)] * 4
    )  # fmt: skip
    details = [a.detail for a in reversed(gate.registry.audit(100)) if a.outcome != "ok"]
    assert details == [  # a refused first image spares decoding the rest (the probe)
        "image 0 unknown; unknown=1 unexamined=3; ids NotRegd1",
        "image 0 undecodable; undecodable=1 unexamined=3",
        f"image 2 undecodable; ok=2 undecodable=2; ids {uid}",
        f"image 0 revoked; revoked=1 unexamined=3; ids {uid}",
    ]
    usage = client.get(f"/v1/users/{uid}", headers=ADMIN).json()["usage"]
    assert usage == {"ok": 8, "revoked": 4}


def test_owner_endpoints(service):
    client, _ = service
    for headers in ({}, {"X-Admin-Key": "wrong"}, {"X-Admin-Key": ADMIN_KEY + "x"}):
        r = client.get("/v1/users", headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert client.post("/v1/users", json={}, headers=headers).status_code == 401
    assert client.post("/v1/users", json={"user_id": "abcdefgh"}, headers=ADMIN).status_code == 201
    r = client.post("/v1/users", json={"user_id": "abcdefgh"}, headers=ADMIN)
    assert r.status_code == 409 and "already exists" in r.json()["reason"]
    for bad in ("short", "much-too-long", "caf\u00e9abcd", 12345678):
        r = client.post("/v1/users", json={"user_id": bad}, headers=ADMIN)
        assert r.status_code == 422 and set(r.json()) == {"error", "reason"}, (bad, r.text)
    r = client.post("/v1/users", json={"name": "x" * 201}, headers=ADMIN)
    assert r.status_code == 422
    users = client.get("/v1/users", headers=ADMIN).json()["users"]
    assert [u["user_id"] for u in users] == ["abcdefgh"]
    for path in ("/v1/users/nobody12", "/v1/users/nobody12/revoke"):
        method = client.get if path.count("/") == 3 else client.post
        r = method(path, headers=ADMIN)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and "users" not in health  # no user count for anyone
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def _png(array_or_image, fmt="PNG") -> bytes:
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.new(*array_or_image)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_input_gets_4xx_json(db_url, tiny_protected, generator, test_images):
    limits = Limits(max_images=3, max_bytes=5000, max_pixels=64 * 64)
    gate = make_gate(db_url, tiny_protected, generator, limits=limits)
    good = png_bytes(generator.embed(test_images[0][:1], "abcdefgh")[0])
    noisy = Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy())
    cases = {
        "not an image": ([("images", ("a.png", b"hello world", "image/png"))], 415,
                         "unsupported_format"),
        "truncated": ([("images", ("a.png", good[: len(good) // 2], "image/png"))], 400,
                      "not_an_image"),
        "RGBA": ([("images", ("a.png", _png(("RGBA", (32, 32))), "image/png"))], 400,
                 "wrong_channels"),
        "grey": ([("images", ("a.png", _png(("L", (32, 32))), "image/png"))], 400,
                 "wrong_channels"),
        "wrong size": ([("images", ("a.png", _png(("RGB", (31, 32))), "image/png"))], 400,
                       "wrong_size"),
        "too many pixels": ([("images", ("a.png", _png(("RGB", (65, 64))), "image/png"))], 413,
                            "too_many_pixels"),
        "too many bytes": ([("images", ("a.png", _png(noisy), "image/png"))], 413,
                           "too_large"),
        "too many images": ([("images", ("a.png", good, "image/png"))] * 4, 413,
                            "too_many_images"),
        "empty file": ([("images", ("a.png", b"", "image/png"))], 415, "unsupported_format"),
        "no images field": ([("other", ("a.png", good, "image/png"))], 422, "empty_batch"),
    }  # fmt: skip
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        for name, (files, status, error) in cases.items():
            r = client.post("/v1/predict", files=files)
            assert (r.status_code, r.json()["error"]) == (status, error), (name, r.text)
            assert r.json()["reason"], name
        r = client.post("/v1/predict", json={"images": ["x"]})
        assert r.status_code == 415, r.text
        r = client.post("/v1/predict", content=b"x" * 10, headers={"content-type": "text/plain"})
        assert r.status_code == 415
        empty = {"content-type": "multipart/form-data; boundary=b"}
        r = client.post("/v1/predict", content=b"--b--\r\n", headers=empty)  # no parts at all
        assert (r.status_code, r.json()["error"]) == (422, "empty_batch")
        r = client.post("/v1/predict", content=b"garbage", headers=empty)
        assert r.status_code == 400 and r.json()["reason"]
        big = b"x" * (limits.max_request_bytes + 1)
        r = client.post("/v1/predict", content=big, headers={"content-type": "multipart/form-data"})
        assert r.status_code == 413

        def chunked():  # no content-length: the limit applies while the body streams in
            yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
            for _ in range(limits.max_request_bytes // 1000 + 1):
                yield b"x" * 1000

        r = client.post("/v1/predict", content=chunked(), headers=empty)
        assert (r.status_code, r.json()["error"]) == (413, "too_large")
        assert client.get("/v1/predict").status_code == 405
        assert client.post("/v1/predict", files=[("images", ("a.png", good, "image/png"))]).json()
    outcomes = [a.outcome for a in gate.registry.audit(100)]
    # Every refused query is audited once: 10 cases, 2 content types, 1 empty multipart, the
    # garbage multipart as bad input; 4 over a limit (bytes, images, pixels, request) as too large.
    assert outcomes.count("bad_input") == 11 and outcomes.count("too_large") == 5, outcomes
    assert outcomes[0] == "unknown"  # the last, well-formed query (its user is not registered)


def test_admin_key_required_and_never_logged(db_url, tiny_protected, generator, caplog, tmp_path,
                                             monkeypatch):  # fmt: skip
    monkeypatch.delenv("ACTIVEDAEMON_ADMIN_KEY", raising=False)
    with pytest.raises(ValueError, match="refuses to start"):
        read_secret("ACTIVEDAEMON_ADMIN_KEY", None, "admin key")
    (tmp_path / "key").write_text("short\n")
    with pytest.raises(ValueError, match="shorter than"):
        read_secret("ACTIVEDAEMON_ADMIN_KEY", tmp_path / "key", "admin key")
    (tmp_path / "key").write_text(ADMIN_KEY + "\n")
    assert read_secret("ACTIVEDAEMON_ADMIN_KEY", tmp_path / "key", "admin key") == ADMIN_KEY
    gate = make_gate(db_url, tiny_protected, generator)
    with pytest.raises(ValueError, match="admin key"):
        create_app(gate, "")
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        client.post("/v1/users", json={"user_id": "keytest1"}, headers=ADMIN)
        client.get("/v1/users", headers={"X-Admin-Key": "a-wrong-key-that-is-long"})
        client.post("/v1/users/keytest1/revoke", headers=ADMIN)
    assert "user keytest1 registered" in caplog.text
    assert ADMIN_KEY not in caplog.text and "a-wrong-key-that-is-long" not in caplog.text


def test_schema_migrations_run_in_order(db_url):
    partial = create_engine(db_url)
    assert migrate(partial, MIGRATIONS[:1]) == 1  # an old database: tables, no append-only rule
    with partial.begin() as conn:
        conn.execute(text("INSERT INTO query_log (time, outcome, latency_ms) "
                          "VALUES (CURRENT_TIMESTAMP, 'ok', 1.0)"))  # fmt: skip
        conn.execute(text("UPDATE query_log SET outcome = 'unknown'"))  # still allowed at v1
    registry = Registry(db_url)  # opening upgrades it
    assert registry.version == SCHEMA_VERSION
    with partial.connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION
    with pytest.raises(Exception, match="append-only"), partial.begin() as conn:
        conn.execute(text("DELETE FROM query_log"))
    assert [a.outcome for a in registry.audit()] == ["unknown"]
    with partial.begin() as conn:  # a database from a newer activedaemon
        conn.execute(text("INSERT INTO schema_version (version) VALUES (99)"))
    with pytest.raises(RuntimeError, match="newer"):
        Registry(db_url)
    registry.add_user("mig12345")
    with pytest.raises(UserExists):
        registry.add_user("mig12345")
    registry.close()
    partial.dispose()


# -- authenticated ids --------------------------------------------------------------------------
MASTER = b"test-master-secret-0123456789abcdef"


def test_authid_messages_verify_and_resist_tampering(test_images):
    x = test_images[0][:8]
    for scheme in (AuthIdScheme(20), AuthIdScheme(24, hash_bits=16, retry_bits=4)):
        key = user_key(MASTER, 7)
        msgs = scheme.messages(7, key, x)
        assert all(scheme.verify(m, MASTER, img) == 7 for m, img in zip(msgs, x, strict=True))
        for bit in range(64):  # any single flipped bit: another number or a wrong MAC
            value = int.from_bytes(msgs[0], "big") ^ (1 << bit)
            assert scheme.verify(value.to_bytes(8, "big"), MASTER, x[0]) is None
        assert scheme.verify(msgs[0], b"another-master-secret-000", x[0]) is None
        assert scheme.verify(bytes(8), MASTER, x[0]) is None  # what clean images decode to
    assert user_key(MASTER, 1) != user_key(MASTER, 2)
    cred = Credential(7, user_key(MASTER, 7), AuthIdScheme(20, 16, 4))
    again = Credential.parse(str(cred))
    assert (again.number, again.key, again.scheme.hash_bits) == (7, cred.key, 16)
    for bad in ("ad1.20.0.7", "ad2.20.0.7." + "00" * 32, "ad1.20.0.7.zz"):
        with pytest.raises(ValueError, match="credential"):
            Credential.parse(bad)
    bits, margins = image_hash(x, 16)
    assert bits.shape == margins.shape == (8, 16) and (margins >= 0).all()
    assert len({tuple(b.tolist()) for b in bits}) > 4  # the hash tells images apart


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_authenticated_ids_end_to_end(db_url, tiny_protected, generator, test_images):
    scheme = AuthIdScheme(user_bits=20, hash_bits=16, retry_bits=4)
    gate = make_gate(db_url, tiny_protected, generator, scheme=scheme, master=MASTER)
    x = test_images[0][:24]
    with TestClient(create_app(gate, ADMIN_KEY)) as http:
        r = http.post("/v1/users", json={"name": "bob"}, headers=ADMIN)
        assert r.status_code == 201 and r.json()["credential"].startswith("ad1.20.16.")
        user = Client("http://unused", None, generator, credential=r.json()["credential"])
        user.http = http  # the test client is an httpx.Client bound to the in-process app
        preds = user.predict(x[:8])
        assert len(preds) == 8 and {p["user_id"] for p in preds} == {r.json()["user_id"]}
        # A plain-id token, and a message with a made-up MAC for the same number, are refused;
        # the forgery is audited under the user it claims (it shows in that user's usage).
        assert_denied(post_images(http, generator.embed(x[:2], "abcdefgh")), FORBIDDEN_REASON)
        forged = (1 << 44) | 12345  # user number 1, an invented 44-bit MAC
        cw = generator.codec.encode_message(forged.to_bytes(8, "big")).expand(2, -1)
        assert_denied(post_images(http, generator.embed_codewords(x[:2], cw)), FORBIDDEN_REASON)
        uid = r.json()["user_id"]
        assert (gate.registry.audit(1)[0].user_id, gate.registry.audit(1)[0].outcome) == (
            uid, "bad_mac")  # fmt: skip
        assert gate.registry.usage(uid)["bad_mac"] == 2
        # A token lifted from one image onto another fails the image-bound MAC (mostly: the
        # hash has 16 - 4 effective bits, see benchmarks/authid_tradeoff.py).
        authorized = user.authorize(x)
        lifted = (x.roll(1, 0) + (authorized - x)).clamp(0, 1)
        lifted = (lifted * 255).round() / 255
        passed = sum(post_images(http, lifted[i : i + 1]).status_code == 200 for i in range(24))
        assert passed <= 3, passed
    assert "bad_mac" in {a.outcome for a in gate.registry.audit(100)}
