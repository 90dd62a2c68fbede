"""The service against a hostile client (issue 16): bodies that attack the image decoder, ids and
names that attack the registry, and the audit log's promise that every query leaves a record.

The toy model and the registry fixtures (SQLite, and PostgreSQL when ACTIVEDAEMON_TEST_PG_URL is
set) are in ``conftest``, the helpers in ``test_serve``.
"""

import functools
import io
import re
import struct
import zlib

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from activedaemon.cli import main
from activedaemon.client import AdminClient, png_bytes
from activedaemon.serve.app import create_app
from activedaemon.serve.gate import FORBIDDEN_REASON, Limits
from activedaemon.serve.server import DB_URL_ENV, read_secret, resolve_db_url
from tests.test_serve import ADMIN, ADMIN_KEY, make_gate, post_images

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def png_declaring(width: int, height: int, color_type: int = 2) -> bytes:
    """A small PNG whose header claims width x height (right CRCs, almost no pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise_image(mode: str = "RGB", size: int = 32, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    rgb = Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy())
    return rgb.convert(mode)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nnewpath 0 0 moveto showpage\n%%EOF\n"


@functools.cache
def other_formats() -> dict[str, bytes]:
    """32 x 32 RGB images in every format the service must not decode (PNG only by default)."""
    im = noise_image()
    frames = [im, noise_image(seed=1)]
    return {
        "BMP": encoded(im, "BMP"),
        "TIFF": encoded(im, "TIFF"),
        "GIF": encoded(im, "GIF"),
        "ICO": encoded(im, "ICO"),
        "PPM": encoded(im, "PPM"),
        "WEBP": encoded(im, "WEBP"),
        "JPEG": encoded(im, "JPEG", quality=95),
        "EPS": EPS,
        "APNG": encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]),
    }


def one(body: bytes):
    return [("images", ("a.png", body, "image/png"))]


def assert_plain(reason: str) -> None:
    """A reason in our words: no Pillow exception text, no object addresses."""
    for leak in ("PIL", "cannot identify", "Errno", "<", "Traceback"):
        assert leak not in reason, reason
    # An address is a hex literal standing alone, not the "0x1" of a size such as "20000x1".
    assert not re.search(r"\b0x[0-9a-fA-F]+", reason), reason


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_decoder_reads_only_allowed_formats_and_survives_bombs(db_url, tiny_protected, generator):
    gate = make_gate(db_url, tiny_protected, generator)
    jpeg = other_formats()["JPEG"]
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        for name, body in other_formats().items():
            r = client.post("/v1/predict", files=one(body))
            assert (r.status_code, r.json()["error"]) == (415, "unsupported_format"), (name, r.text)
            assert_plain(r.json()["reason"])
        for width, height in ((20000, 20000), (5000, 5000), (2**31 - 1, 2**31 - 1), (1, 10**7)):
            r = client.post("/v1/predict", files=one(png_declaring(width, height)))
            assert (r.status_code, r.json()["error"]) == (413, "too_many_pixels"), (width, r.text)
            assert_plain(r.json()["reason"])
        broken = png_bytes(torch.rand(3, 32, 32))
        for body in (broken[:40], broken[: len(broken) // 2], PNG_MAGIC + b"\x00" * 50, PNG_MAGIC):
            r = client.post("/v1/predict", files=one(body))
            assert (r.status_code, r.json()["error"]) == (400, "not_an_image"), r.text
            assert_plain(r.json()["reason"])
    assert gate.registry.count_audit() == len(other_formats()) + 4 + 4
    # JPEG where configured: decoded (this clean image carries no token, so a plain 403).
    gate = make_gate(db_url, tiny_protected, generator, limits=Limits(formats=("PNG", "JPEG")))
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        r = client.post("/v1/predict", files=one(jpeg))
        assert (r.status_code, r.json()["reason"]) == (403, FORBIDDEN_REASON), r.text
        r = client.post("/v1/predict", files=one(other_formats()["TIFF"]))
        assert r.status_code == 415 and "PNG or JPEG" in r.json()["reason"]


def test_nul_and_control_characters_are_4xx(db_url, tiny_protected, generator):
    gate = make_gate(db_url, tiny_protected, generator)
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        for name in ("a\x00b", "evil\x1b[2J", "bell\x07", "c1\x9b"):
            r = client.post("/v1/users", json={"name": name}, headers=ADMIN)
            assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), (name, r.text)
        assert (
            client.post("/v1/users", json={"user_id": "ab\x00cdefg"}, headers=ADMIN).status_code
            == 422
        )
        for path in ("/v1/users/ab%00cdefg", "/v1/users/%00", "/v1/users/abc%00defg/revoke",
                     "/v1/users/abc%00defg/activate"):  # fmt: skip
            method = client.get if path.count("/") == 3 else client.post
            r = method(path, headers=ADMIN)
            assert (r.status_code, r.json()["error"]) == (404, "not_found"), (path, r.text)
        assert (
            client.post("/v1/users", json={"name": "Zoë O'Brien"}, headers=ADMIN).status_code == 201
        )
    assert gate.registry.usage("ab\x00cdefg") == {}
    gate.registry.close()


def test_every_predict_outcome_is_audited_once(db_url, tiny_protected, generator, test_images):
    limits = Limits(max_images=4, max_bytes=5000)
    gate = make_gate(db_url, tiny_protected, generator, limits=limits)
    registry = gate.registry
    x = test_images[0][:4]
    multipart = {"content-type": "multipart/form-data; boundary=b"}

    def chunked():  # no content-length: the body limit applies while it streams in
        yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
        for _ in range(limits.max_request_bytes // 1000 + 1):
            yield b"x" * 1000

    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        uid = client.post("/v1/users", json={}, headers=ADMIN).json()["user_id"]
        authorized = generator.embed(x, uid)

        def expect(response, status: int, rows: int, outcome: str, user=None, images=None):
            assert response.status_code == status, response.text
            got = registry.audit(rows + 1)
            assert registry.count_audit() == expect.total + rows, (response.text, got[:2])
            expect.total += rows
            assert got[0].outcome == outcome and got[0].user_id == user, got[0]
            if images is not None:
                assert got[0].images == images, got[0]
            if status != 200:
                assert set(response.json()) == {"error", "reason"}
            if status == 403:
                assert response.json()["reason"] == FORBIDDEN_REASON

        expect.total = 0
        big = b"x" * (limits.max_request_bytes + 1)
        expect(client.post("/v1/predict", content=big, headers=multipart), 413, 1, "too_large")
        r = client.post("/v1/predict", content=chunked(), headers=multipart)
        expect(r, 413, 1, "too_large")
        r = client.post("/v1/predict", content=b"garbage", headers=multipart)
        expect(r, 400, 1, "bad_input")
        expect(client.post("/v1/predict", json={"images": ["x"]}), 415, 1, "bad_input")
        r = client.post("/v1/predict", content=b"--b--\r\n", headers=multipart)
        expect(r, 422, 1, "bad_input")
        expect(post_images(client, torch.cat([authorized, x[:1]])), 413, 1, "too_large", images=5)
        expect(client.post("/v1/predict", files=one(b"hello")), 415, 1, "bad_input", images=1)
        expect(post_images(client, x), 403, 1, "undecodable", images=4)
        expect(post_images(client, generator.embed(x[:3], "NotRegd1")), 403, 1, "unknown",
               user="NotRegd1", images=3)  # fmt: skip
        mixed = torch.cat([authorized[:2], x[2:]])
        expect(post_images(client, mixed), 403, 1, "undecodable", images=4)
        assert "ok=2 undecodable=2" in registry.audit(1)[0].detail
        expect(post_images(client, authorized), 200, 4, "ok", user=uid, images=1)
        client.post(f"/v1/users/{uid}/revoke", headers=ADMIN)
        expect(post_images(client, authorized[:3]), 403, 1, "revoked", user=uid, images=3)
        client.post(f"/v1/users/{uid}/activate", headers=ADMIN)

        def broken_model(_images):
            raise RuntimeError("model failure at 0xdeadbeef")

        gate.model, model = broken_model, gate.model
        r = post_images(client, authorized)
        expect(r, 500, 1, "error", images=4)
        assert r.json()["error"] == "internal_error" and "0x" not in r.json()["reason"]
        gate.model = model
        users = registry.users

        def outage(**_kw):
            raise sa_exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

        registry.users = outage
        r = post_images(client, authorized)
        expect(r, 503, 1, "unavailable", images=4)
        assert r.json()["error"] == "registry_unavailable" and r.headers["retry-after"]
        registry.users = users
        expect(post_images(client, authorized), 200, 4, "ok", user=uid)
        health = client.get("/healthz").json()
        assert "users" not in health and health["status"] == "ok"
        usage = client.get(f"/v1/users/{uid}", headers=ADMIN).json()["usage"]
    assert usage == {"ok": 8, "revoked": 3}
    registry.close()


# -- the property-based hostile-body test ---------------------------------------------------------
MODES = ["1", "L", "LA", "P", "RGBA", "I", "I;16", "F", "CMYK", "YCbCr", "RGB"]


@st.composite
def hostile_body(draw, valid: list[bytes], refused: list[bytes]) -> tuple[str, bytes]:
    """(kind, body): one image part a hostile client might send. ``valid``: PNGs that carry a
    registered user's token; ``refused``: well-formed PNGs without one (clean, unknown user)."""
    kind = draw(st.sampled_from(
        ["valid", "refused", "truncated", "flipped", "bad_crc", "declared_size", "mode", "format",
         "random", "chunk", "empty"]
    ))  # fmt: skip
    base = draw(st.sampled_from(valid))
    if kind == "valid":
        return kind, base
    if kind == "refused":
        return kind, draw(st.sampled_from(refused))
    if kind == "truncated":
        return kind, base[: draw(st.integers(0, len(base) - 1))]
    if kind == "flipped":
        body = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
        return kind, bytes(body)
    if kind == "bad_crc":  # the IHDR's CRC (bytes 29-32) or the last 4 bytes of another chunk
        at = draw(st.sampled_from([29, len(base) - 16, len(base) - 4]))
        body = bytearray(base)
        body[at] ^= draw(st.integers(1, 255))
        return kind, bytes(body)
    if kind == "declared_size":
        side = st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 32, 31, 33, 20000, 2**31 - 1])
        color = draw(st.sampled_from([0, 2, 3, 4, 6, 7]))
        return kind, png_declaring(draw(side), draw(side), color)
    if kind == "mode":
        mode = draw(st.sampled_from(MODES))
        size = draw(st.sampled_from([32, 31, 1]))
        fmt = "PNG" if mode not in ("CMYK", "YCbCr", "F") else "TIFF"
        return kind, encoded(noise_image(mode, size), fmt)
    if kind == "format":
        return kind, draw(st.sampled_from(sorted(other_formats().values())))
    if kind == "random":
        prefix = draw(st.sampled_from([b"", PNG_MAGIC, b"\xff\xd8\xff", b"GIF89a", b"%!PS"]))
        return kind, prefix + draw(st.binary(max_size=200))
    if kind == "chunk":  # an extra chunk after IHDR: unknown, text, animation control, bogus size
        kinds = [b"tEXt", b"zTXt", b"iCCP", b"acTL", b"fcTL", b"PLTE", b"IEND", b"xYzW", b"IDAT"]
        name = draw(st.sampled_from(kinds))
        data = draw(st.binary(max_size=64))
        extra = chunk(name, data)
        if draw(st.booleans()):
            extra = struct.pack(">I", draw(st.integers(0, 2**32 - 1))) + extra[4:]
        return kind, base[:33] + extra + base[33:]
    return kind, b""


def test_hostile_bodies_never_5xx_and_always_audited(tiny_protected, generator, test_images,
                                                     tmp_path):  # fmt: skip
    from activedaemon.serve.registry import sqlite_url

    gate = make_gate(sqlite_url(tmp_path / "hostile.db"), tiny_protected, generator)
    registry = gate.registry
    x, _ = test_images
    stats = {"requests": 0, "bodies": 0, "answered": 0, "by_status": {}}
    failures: list[str] = []
    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        uid = client.post("/v1/users", json={}, headers=ADMIN).json()["user_id"]
        authorized = generator.embed(x[:8], uid)
        valid = [png_bytes(img) for img in authorized]
        refused = [
            png_bytes(img) for img in torch.cat([x[8:12], generator.embed(x[12:16], "NotRegd1")])
        ]

        @settings(max_examples=1100, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(batch=st.lists(hostile_body(valid, refused), min_size=1, max_size=3))
        def run(batch):
            before = registry.count_audit()
            files = [
                ("images", (f"{i}.png", body, "image/png")) for i, (_, body) in enumerate(batch)
            ]
            r = client.post("/v1/predict", files=files)
            rows = registry.count_audit() - before
            stats["requests"] += 1
            stats["bodies"] += len(batch)
            stats["by_status"][r.status_code] = stats["by_status"].get(r.status_code, 0) + 1
            expected_rows = len(batch) if r.status_code == 200 else 1
            if r.status_code >= 500 or rows != expected_rows:
                kinds = [k for k, _ in batch]
                failures.append(f"{kinds} -> {r.status_code} {r.text[:200]}, {rows} audit rows")
            if r.status_code == 200:
                stats["answered"] += 1
                # Only bodies made from an authorized PNG can be answered (a damaged ancillary
                # chunk, IEND's CRC or the cut-off IEND do not change the pixels).
                derived = ("valid", "flipped", "chunk", "bad_crc", "truncated")
                assert all(k in derived for k, _ in batch), batch
            else:
                assert set(r.json()) == {"error", "reason"}
                assert_plain(r.json()["reason"])

        run()
        print(f"hostile bodies: {stats}")
        assert not failures, failures[:5]
        assert stats["bodies"] >= 2000, stats
        assert stats["answered"] > 0 and {400, 403, 413, 415} <= set(stats["by_status"]), stats
        r = post_images(client, authorized)  # a valid query is still answered afterwards
        assert r.status_code == 200 and {p["user_id"] for p in r.json()["predictions"]} == {uid}
    registry.close()


# -- smaller findings -----------------------------------------------------------------------------
def test_read_secret_reads_the_first_line(tmp_path):
    (tmp_path / "key").write_text("first-line-secret-0123456789\nsecond line is not the key\n")
    assert (
        read_secret("UNUSED_ENV", tmp_path / "key", "admin key") == "first-line-secret-0123456789"
    )


def test_registry_url_from_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(DB_URL_ENV, raising=False)
    assert resolve_db_url(None, None).startswith("sqlite:///")
    assert resolve_db_url("sqlite:///x.db", None) == "sqlite:///x.db"
    monkeypatch.setenv(DB_URL_ENV, "postgresql+psycopg://u:secret@h/db")
    assert resolve_db_url("sqlite:///x.db", None) == "postgresql+psycopg://u:secret@h/db"
    (tmp_path / "db").write_text("postgresql+psycopg://u:other@h/db\n# comment\n")
    assert resolve_db_url(None, tmp_path / "db") == "postgresql+psycopg://u:other@h/db"
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="no registry URL"):
        resolve_db_url(None, tmp_path / "empty")


def test_users_list_escapes_terminal_control_codes(monkeypatch, capsys):
    rows = [{"user_id": "abcdefgh", "status": "active", "created_at": "2026-01-01",
             "name": "evil\x1b[2J\x1b]0;owned\x07\r\n"}]  # fmt: skip
    monkeypatch.setattr(AdminClient, "list", lambda self: rows)
    monkeypatch.setenv("ACTIVEDAEMON_ADMIN_KEY", ADMIN_KEY)
    assert main(["users", "list", "--url", "http://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert out.strip().endswith("evil\\x1b[2J\\x1b]0;owned\\x07\\r\\n")


# -- credentials, the audit log, revocation ----------------------------------------------------
MASTER = b"hostile-master-secret-0123456789"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_old_credentials_fail_after_a_registry_reset(db_url, tiny_protected, generator, test_images,
                                                     tmp_path):  # fmt: skip
    from activedaemon.client import Client
    from activedaemon.serve.authid import AuthIdScheme, Credential
    from activedaemon.serve.registry import sqlite_url

    scheme = AuthIdScheme(user_bits=20)
    x = test_images[0][:4]
    old = make_gate(db_url, tiny_protected, generator, scheme=scheme, master=MASTER)
    info, credential = old.add_user(None, "revoked later")
    old.registry.set_active(info.user_id, False)
    assert info.number == 1
    lifted = Client("http://unused", None, generator, credential=credential).authorize(x)
    # The registry is reset (or an older backup restored): number 1 is issued again.
    fresh = make_gate(sqlite_url(tmp_path / "reset.db"), tiny_protected, generator, scheme=scheme,
                      master=MASTER)  # fmt: skip
    assert fresh.registry.key_epoch != old.registry.key_epoch
    new, new_credential = fresh.add_user(None, "new holder of number 1")
    assert new.number == 1 and new_credential != credential
    with TestClient(create_app(fresh, ADMIN_KEY)) as http:
        assert_denied = post_images(http, lifted)
        assert assert_denied.status_code == 403, assert_denied.text
        row = fresh.registry.audit(1)[0]
        assert (row.user_id, row.outcome) == (new.user_id, "bad_mac")  # the claimed user
        user = Client("http://unused", None, generator, credential=new_credential)
        user.http = http
        assert {p["user_id"] for p in user.predict(x)} == {new.user_id}
    # Two users registered in the same registry get unrelated keys, also for the same number.
    a, b = fresh.registry.add_user(), fresh.registry.add_user()
    assert a.key_salt != b.key_salt and fresh.user_key(a) != fresh.user_key(b)
    # Not the old derivation HMAC(master, n), which one user's key lets anyone brute-force a
    # short master against at HMAC speed; the new one goes through scrypt first.
    from activedaemon.serve.authid import stretch_master, user_key, user_key_v2

    assert fresh.user_key(new) != user_key(MASTER, new.number)
    salt = bytes.fromhex(new.key_salt)
    guess = user_key_v2(stretch_master(MASTER, fresh.registry.key_epoch),
                        fresh.registry.key_epoch, 1, salt)  # fmt: skip
    assert guess == fresh.user_key(new) == Credential.parse(new_credential).key


def _service_role_url(owner_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(owner_url).set(username="activedaemon_svc", password="activedaemon_svc")


def test_audit_log_is_append_only(db_url):
    from activedaemon.serve.registry import Registry

    registry = Registry(db_url)
    registry.log_queries([("abcdefgh", "ok", 1.0), (None, "undecodable", 2.0)])
    owner = registry.engine
    tries = ["UPDATE query_log SET outcome = 'ok'", "DELETE FROM query_log"]
    if registry.dialect == "sqlite":
        tries += [
            "INSERT OR REPLACE INTO query_log (id, time, outcome, latency_ms, images) "
            "VALUES (1, CURRENT_TIMESTAMP, 'forged', 0, 1)",
            "REPLACE INTO query_log (id, time, outcome, latency_ms, images) "
            "VALUES (2, CURRENT_TIMESTAMP, 'forged', 0, 1)",
        ]
    else:
        tries += ["TRUNCATE query_log"]
    for sql in tries:
        with pytest.raises(sa_exc.DBAPIError, match="append-only"), owner.begin() as conn:
            conn.execute(text(sql))
    assert [(a.user_id, a.outcome) for a in registry.audit()] == [
        (None, "undecodable"), ("abcdefgh", "ok")]  # fmt: skip
    if registry.dialect != "postgresql":
        registry.close()
        return
    # PostgreSQL: the service runs as a role that owns nothing and may only append.
    service_url = _service_role_url(db_url)
    try:
        create_engine(service_url).connect().close()
    except sa_exc.OperationalError:
        pytest.skip("PostgreSQL role activedaemon_svc missing (.ci/postgres.sh makes it)")
    registry.grant_service_role("activedaemon_svc")
    service = Registry(service_url.render_as_string(hide_password=False))
    user = service.add_user(None, "via service role")
    service.set_active(user.user_id, False)
    service.log_queries([(user.user_id, "ok", 1.0)])
    assert service.usage(user.user_id) == {"ok": 1} and len(service.audit()) == 3
    for sql in [*tries, "ALTER TABLE query_log DISABLE TRIGGER ALL",
                "DROP TRIGGER query_log_append_only ON query_log", "DROP TABLE query_log",
                "ALTER TABLE query_log OWNER TO activedaemon_svc"]:  # fmt: skip
        with pytest.raises(sa_exc.DBAPIError), service.engine.begin() as conn:
            conn.execute(text(sql))
    assert len(registry.audit()) == 3
    service.close()
    registry.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_revoke_while_the_model_runs_refuses_the_answer(db_url, tiny_protected, generator,
                                                       test_images):  # fmt: skip
    gate = make_gate(db_url, tiny_protected, generator)
    uid = gate.registry.add_user().user_id
    authorized = generator.embed(test_images[0][:4], uid)
    model = gate.model

    def revoked_mid_forward(images):  # the owner's revoke returns while this batch is in the model
        gate.registry.set_active(uid, False)
        return model(images)

    with TestClient(create_app(gate, ADMIN_KEY)) as client:
        assert post_images(client, authorized).status_code == 200
        gate.model = revoked_mid_forward
        r = post_images(client, authorized)
        assert (r.status_code, r.json()["reason"]) == (403, FORBIDDEN_REASON), r.text
    rows = [(a.user_id, a.outcome, a.images) for a in gate.registry.audit(2)]
    assert rows == [(uid, "revoked", 4), (uid, "ok", 1)]
    gate.registry.close()
