"""Signed URLs: HMAC-SHA256 over the request target as sent, key rotation, expiry, the 403-first rule,
the settings validator, `imgproxy sign` and the `imgproxy.client` URL builder.

Expected signatures are computed here, independently, with hmac/hashlib/base64."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

import imgproxy.signing
from imgproxy.client import ImageUrls
from imgproxy.errors import BadParameter, Forbidden
from imgproxy.options import Fit, Format
from imgproxy.settings import SecuritySettings, Settings
from tests.conftest import assert_problem, decode

KEY = "k3y-0123456789abcdefXYZ"  # the README's example key
KEY2 = "rotated-key-9876543210-ABCdef"
OTHER = "not-configured-key-5555-QQQQ"
IMGPROXY_BIN = Path(sys.executable).parent / "imgproxy"
CHELSEA = (451, 300)

MakeClient = Callable[..., TestClient]


# --- helpers ------------------------------------------------------------------------------------------------------


def expected_sig(key: str, message: str) -> str:
    """base64url(HMAC-SHA256(key, message)) without padding, computed independently of imgproxy."""
    digest = hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def signed(target: str, key: str = KEY) -> str:
    return target + ("&" if "?" in target else "?") + "s=" + expected_sig(key, target)


def image_size(response: Any) -> tuple[int, int]:
    assert response.status_code == 200, response.text
    size: tuple[int, int] = decode(response.content).size
    return size


def cli_env(keys: str | None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("IMGPROXY_")}
    if keys is not None:
        env["IMGPROXY_SECURITY__SIGNING_KEYS"] = keys
    return env


def run_cli(args: list[str], keys: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMGPROXY_BIN), *args], env=cli_env(keys), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def signed_client(make_client: MakeClient) -> TestClient:
    return make_client(security={"signing_keys": [KEY, KEY2]})


# --- the signature itself, independently computed ------------------------------------------------------------------


def test_readme_vector_matches_independent_hmac() -> None:
    assert expected_sig(KEY, "/img/chelsea.png?w=100") == "j4JSobQ07BfrycObLjN1hmjjebx8aHQJsZhiMcrIbaY"


@pytest.mark.parametrize("message", ["/img/chelsea.png", "/img/chelsea.png?w=100", "/img/a%20b.png?w=10&h=5"])
def test_signature_function_matches_independent_hmac(message: str) -> None:
    sig = imgproxy.signing.signature(KEY.encode(), message.encode())
    assert sig == expected_sig(KEY, message)
    assert len(sig) == 43 and re.fullmatch(r"[A-Za-z0-9_-]+", sig)  # 32 bytes, base64url, no padding


def test_sign_appends_s_last() -> None:
    assert imgproxy.signing.sign("/img/cat.jpg", KEY.encode()) == "/img/cat.jpg?s=" + expected_sig(KEY, "/img/cat.jpg")
    target = "/img/cat.jpg?w=300"
    assert imgproxy.signing.sign(target, KEY.encode()) == target + "&s=" + expected_sig(KEY, target)


def test_sign_with_expires_signs_it() -> None:
    result = imgproxy.signing.sign("/img/cat.jpg?w=300", KEY.encode(), expires=2_000_000_000)
    message = "/img/cat.jpg?w=300&expires=2000000000"
    assert result == message + "&s=" + expected_sig(KEY, message)
    bare = imgproxy.signing.sign("/img/cat.jpg", KEY.encode(), expires=2_000_000_000)
    assert bare == "/img/cat.jpg?expires=2000000000&s=" + expected_sig(KEY, "/img/cat.jpg?expires=2000000000")


@pytest.mark.parametrize(
    ("raw_path", "query", "message", "sig"),
    [
        (b"/img/a.png", b"s=abc", b"/img/a.png", "abc"),
        (b"/img/a.png", b"w=1&s=abc", b"/img/a.png?w=1", "abc"),
        (b"/img/a.png", b"w=1&h=2&s=abc", b"/img/a.png?w=1&h=2", "abc"),
        (b"/img/a.png", b"s=abc&w=1", b"/img/a.png", None),
        (b"/img/a.png", b"w=1", b"/img/a.png?w=1", None),
        (b"/img/a.png", b"", b"/img/a.png", None),
    ],
)
def test_split_signature(raw_path: bytes, query: bytes, message: bytes, sig: str | None) -> None:
    assert imgproxy.signing.split_signature(raw_path, query) == (message, sig)


def test_verify_unit() -> None:
    keys = [KEY.encode(), KEY2.encode()]
    assert imgproxy.signing.verify(b"/img/a.png", b"w=1", []) is False  # no keys: nothing to check
    good = expected_sig(KEY2, "/img/a.png?w=1").encode()
    assert imgproxy.signing.verify(b"/img/a.png", b"w=1&s=" + good, keys) is True
    with pytest.raises(Forbidden):
        imgproxy.signing.verify(b"/img/a.png", b"w=2&s=" + good, keys)
    with pytest.raises(Forbidden):
        imgproxy.signing.verify(b"/img/a.png", b"w=1", keys)


def test_verify_compares_in_constant_time_against_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module imgproxy.signing calls through
    sig = expected_sig(KEY, "/img/a.png?w=1")
    assert imgproxy.signing.verify(b"/img/a.png", b"w=1&s=" + sig.encode(), [KEY.encode(), KEY2.encode()])
    # the first key matches, yet both are compared (no early exit revealing which key matched)
    assert len(calls) == 2
    assert all(b == sig.encode() for _, b in calls)


def test_check_expiry_unit() -> None:
    now = 1_700_000_000.0
    imgproxy.signing.check_expiry(None, now)
    imgproxy.signing.check_expiry(str(int(now) + 60), now)
    with pytest.raises(Forbidden):
        imgproxy.signing.check_expiry(str(int(now) - 1), now)
    for bad in ("abc", "-5", "1.5", "", "9" * 13):
        with pytest.raises(BadParameter):
            imgproxy.signing.check_expiry(bad, now)


# --- through HTTP: valid signatures ----------------------------------------------------------------------------------


def test_valid_signature_without_other_params(signed_client: TestClient) -> None:
    url = signed("/img/chelsea.png")
    assert url == "/img/chelsea.png?s=" + expected_sig(KEY, "/img/chelsea.png")
    assert image_size(signed_client.get(url)) == CHELSEA


def test_valid_signature_with_params(signed_client: TestClient) -> None:
    response = signed_client.get(signed("/img/chelsea.png?w=100"))
    assert image_size(response)[0] == 100


def test_valid_signature_with_several_params(signed_client: TestClient) -> None:
    response = signed_client.get(signed("/img/chelsea.png?w=100&h=100&fit=cover&fm=png"))
    assert response.headers["content-type"] == "image/png"
    assert image_size(response) == (100, 100)


def test_utf8_key(make_client: MakeClient) -> None:
    key = "ключ-0123456789-абвгд"
    client = make_client(security={"signing_keys": [key]})
    assert image_size(client.get(signed("/img/chelsea.png?w=50", key)))[0] == 50
    assert_problem(client.get(signed("/img/chelsea.png?w=50", key.encode("utf-8").decode("latin-1"))), 403)


# --- through HTTP: tampering, keys, expiry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signed_target", "sent_target"),
    [
        ("/img/chelsea.png?w=100", "/img/coffee.png?w=100"),  # path
        ("/img/chelsea.png", "/img/coffee.png"),  # path, no params
        ("/img/chelsea.png?w=100", "/img/chelsea.png?w=101"),  # changed value
        ("/img/chelsea.png?w=100", "/img/chelsea.png?w=100&h=50"),  # added param
        ("/img/chelsea.png?w=100", "/img/chelsea.png?h=50&w=100"),  # added param in front
        ("/img/chelsea.png?w=100&h=50", "/img/chelsea.png?h=50&w=100"),  # reordered
        ("/img/chelsea.png?w=100", "/img/chelsea.png"),  # removed param
        ("/img/chelsea.png", "/img/chelsea.png?w=100"),  # param added to a bare signed path
        ("/img/chelsea.png?w=100", "/img/chelsea.png?width=100"),  # alias: same meaning, different bytes
        ("/img/chelsea.png?w=100", "/img/chelsea.png?w=100&"),  # trailing separator
    ],
)
def test_tampered_url_is_403(signed_client: TestClient, signed_target: str, sent_target: str) -> None:
    sig = expected_sig(KEY, signed_target)
    sent = sent_target + ("&" if "?" in sent_target else "?") + "s=" + sig
    body = assert_problem(signed_client.get(sent), 403)
    assert "signature" in body["detail"]


def test_mangled_signature_is_403(signed_client: TestClient) -> None:
    target = "/img/chelsea.png?w=100"
    sig = expected_sig(KEY, target)
    flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
    for bad in (sig[:-1], sig + "=", sig + "A", flipped, sig.lower(), ""):
        assert_problem(signed_client.get(f"{target}&s={bad}"), 403)


def test_wrong_key_is_403(signed_client: TestClient) -> None:
    assert_problem(signed_client.get(signed("/img/chelsea.png?w=100", OTHER)), 403)


def test_rotated_keys_all_verify(signed_client: TestClient) -> None:
    assert image_size(signed_client.get(signed("/img/chelsea.png?w=120", KEY)))[0] == 120
    assert image_size(signed_client.get(signed("/img/chelsea.png?w=130", KEY2)))[0] == 130


def test_key_removed_from_rotation_stops_verifying(make_client: MakeClient) -> None:
    client = make_client(security={"signing_keys": [KEY2]})
    assert image_size(client.get(signed("/img/chelsea.png?w=120", KEY2)))[0] == 120
    assert_problem(client.get(signed("/img/chelsea.png?w=120", KEY)), 403)


def test_expired_url_is_403(signed_client: TestClient) -> None:
    past = int(time.time()) - 10
    body = assert_problem(signed_client.get(signed(f"/img/chelsea.png?w=100&expires={past}")), 403)
    assert "expire" in body["detail"]


def test_future_expires_is_200(signed_client: TestClient) -> None:
    future = int(time.time()) + 3600
    assert image_size(signed_client.get(signed(f"/img/chelsea.png?w=100&expires={future}")))[0] == 100
    assert image_size(signed_client.get(signed(f"/img/chelsea.png?expires={future}", KEY2))) == CHELSEA


def test_expires_tampered_after_signing_is_403(signed_client: TestClient) -> None:
    soon = int(time.time()) + 60
    sig = expected_sig(KEY, f"/img/chelsea.png?w=100&expires={soon}")
    for changed in (soon + 86400 * 365, int(time.time()) - 60):
        body = assert_problem(signed_client.get(f"/img/chelsea.png?w=100&expires={changed}&s={sig}"), 403)
        assert "signature" in body["detail"]


def test_missing_signature_is_403(signed_client: TestClient) -> None:
    assert_problem(signed_client.get("/img/chelsea.png"), 403)
    assert_problem(signed_client.get("/img/chelsea.png?w=100"), 403)


def test_signature_not_last_is_403(signed_client: TestClient) -> None:
    sig = expected_sig(KEY, "/img/chelsea.png?w=100")
    assert_problem(signed_client.get(f"/img/chelsea.png?s={sig}&w=100"), 403)
    bare_sig = expected_sig(KEY, "/img/chelsea.png")
    assert_problem(signed_client.get(f"/img/chelsea.png?s={bare_sig}&w=100"), 403)


def test_signature_given_twice_is_never_served(signed_client: TestClient) -> None:
    target = "/img/chelsea.png?w=100"
    sig = expected_sig(KEY, target)
    attempts = [
        f"{target}&s={sig}&s={sig}",
        f"/img/chelsea.png?s={sig}&s={sig}",
        f"{target}&s=garbage&s={sig}",
        signed(f"{target}&s={sig}"),  # even a correct signature over a target that already holds s
    ]
    for url in attempts:
        response = signed_client.get(url)
        assert response.status_code in (400, 403), url
        assert_problem(response, response.status_code)


def test_percent_encoded_path_is_signed_as_sent(make_client: MakeClient, source_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(source_root / "chelsea.png", root / "a b.png")
    client = make_client(security={"signing_keys": [KEY]}, source={"local_root": root})
    assert image_size(client.get(signed("/img/a%20b.png?w=10")))[0] == 10
    # the same request signed over a different spelling of the path is not the target as sent
    sig = expected_sig(KEY, "/img/a b.png?w=10")
    assert_problem(client.get(f"/img/a%20b.png?w=10&s={sig}"), 403)
    sig = expected_sig(KEY, "/img/a%20b.png?w=10")
    assert_problem(client.get(f"/img/a%20%62.png?w=10&s={sig}"), 403)  # %62 is "b": same file, other bytes


def test_signature_is_checked_before_anything_else(signed_client: TestClient) -> None:
    assert_problem(signed_client.get("/img/nonexistent.png"), 403)
    assert_problem(signed_client.get("/img/chelsea.png?w=abc"), 403)
    assert_problem(signed_client.get("/img/chelsea.png?zoom=3"), 403)
    assert_problem(signed_client.get("/img/%2e%2e/%2e%2e/etc/passwd"), 403)
    assert_problem(signed_client.get(signed("/img/nonexistent.png", OTHER)), 403)
    assert_problem(signed_client.get(signed("/img/chelsea.png?w=abc", OTHER)), 403)
    assert_problem(signed_client.get("/img?url=http://example.com/x.jpg"), 403)
    head = signed_client.head("/img/chelsea.png?w=100")
    assert head.status_code == 403 and head.headers["cache-control"] == "no-store"
    # the same requests, correctly signed, reach the later checks
    assert_problem(signed_client.get(signed("/img/nonexistent.png")), 404)
    assert_problem(signed_client.get(signed("/img/chelsea.png?w=abc")), 400)


def test_signature_is_checked_before_the_url_count(signed_client: TestClient) -> None:
    assert_problem(signed_client.get("/img"), 403)
    assert_problem(signed_client.get("/img?url=http://a.example/x.jpg&url=http://b.example/y.jpg"), 403)


# --- without keys ------------------------------------------------------------------------------------------------


def test_without_keys_unsigned_requests_work(client: TestClient) -> None:
    assert image_size(client.get("/img/chelsea.png")) == CHELSEA
    assert image_size(client.get("/img/chelsea.png?w=100"))[0] == 100


def test_without_keys_a_stray_signature_is_tolerated(client: TestClient) -> None:
    assert image_size(client.get("/img/chelsea.png?w=100&s=garbage"))[0] == 100
    assert image_size(client.get("/img/chelsea.png?s=garbage")) == CHELSEA
    assert image_size(client.get(signed("/img/chelsea.png?w=90")))[0] == 90


def test_without_keys_expires_still_ends_a_url(client: TestClient) -> None:
    assert_problem(client.get(f"/img/chelsea.png?w=100&expires={int(time.time()) - 5}"), 403)
    assert image_size(client.get(f"/img/chelsea.png?w=100&expires={int(time.time()) + 600}"))[0] == 100


# --- settings ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["", "short", "changeme", "secret", "xxxxxxxxxxxxxxxxxxxx", "----secret------", "aaaaaaaaaaaaaaaaaaaaaaaa"]
)
def test_settings_refuse_empty_short_and_placeholder_keys(key: str) -> None:
    with pytest.raises(ValidationError):
        SecuritySettings(signing_keys=[key])
    with pytest.raises(ValidationError):
        Settings(_env_file=None, security={"signing_keys": [KEY, key]})  # a bad key anywhere in the list


@pytest.mark.parametrize(
    "key", ["secret..........", "secretsecretsecret", "changeme-changeme", "<random string of 16+ characters>"]
)
def test_settings_refuse_padded_placeholder_keys(key: str) -> None:
    with pytest.raises(ValidationError):
        SecuritySettings(signing_keys=[key])


def test_settings_accept_real_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPROXY_SECURITY__SIGNING_KEYS", f'["{KEY}", "{KEY2}"]')
    settings = Settings(_env_file=None)
    assert settings.security.keys == [KEY.encode(), KEY2.encode()]
    assert KEY not in repr(settings)  # secrets stay out of reprs and logs


def test_settings_refuse_a_placeholder_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPROXY_SECURITY__SIGNING_KEYS", '["changeme"]')
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


# --- imgproxy sign ---------------------------------------------------------------------------------------------------


def test_cli_sign_prints_a_url_the_server_accepts(make_client: MakeClient, tmp_path: Path) -> None:
    result = run_cli(["sign", "/img/chelsea.png?w=300"], f'["{KEY}"]', tmp_path)
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url == "/img/chelsea.png?w=300&s=" + expected_sig(KEY, "/img/chelsea.png?w=300")
    client = make_client(security={"signing_keys": [KEY]})
    assert image_size(client.get(url))[0] == 300


def test_cli_sign_uses_the_first_key(make_client: MakeClient, tmp_path: Path) -> None:
    result = run_cli(["sign", "/img/chelsea.png?w=200"], f'["{KEY2}", "{KEY}"]', tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == signed("/img/chelsea.png?w=200", KEY2)
    client = make_client(security={"signing_keys": [KEY, KEY2]})  # verifies with the second configured key
    assert image_size(client.get(result.stdout.strip()))[0] == 200


def test_cli_sign_expires_in_adds_a_signed_expiry(make_client: MakeClient, tmp_path: Path) -> None:
    before = int(time.time())
    result = run_cli(["sign", "--expires-in", "60", "/img/chelsea.png?w=300"], f'["{KEY}"]', tmp_path)
    after = int(time.time())
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    message, _, sig = url.rpartition("&s=")
    assert sig == expected_sig(KEY, message)
    params = dict(parse_qsl(urlsplit(message).query))
    assert params["w"] == "300"
    assert before + 60 <= int(params["expires"]) <= after + 60
    client = make_client(security={"signing_keys": [KEY]})
    assert image_size(client.get(url))[0] == 300
    tampered = message.replace(f"expires={params['expires']}", f"expires={int(params['expires']) + 1}")
    assert_problem(client.get(f"{tampered}&s={sig}"), 403)


def test_cli_sign_without_keys_fails_clearly(tmp_path: Path) -> None:
    result = run_cli(["sign", "/img/chelsea.png?w=300"], None, tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "IMGPROXY_SECURITY__SIGNING_KEYS" in result.stderr


def test_cli_sign_with_a_placeholder_key_fails(tmp_path: Path) -> None:
    result = run_cli(["sign", "/img/chelsea.png?w=300"], '["changeme"]', tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "signing" in result.stderr.lower() and "Traceback" not in result.stderr


# --- imgproxy.client -----------------------------------------------------------------------------------------------


def test_client_url_matches_independent_signature() -> None:
    urls = ImageUrls("https://img.example.com/", key=KEY)
    url = urls.url("chelsea.png", w=100)
    assert url == "https://img.example.com" + signed("/img/chelsea.png?w=100")


def test_client_url_is_accepted_by_the_server(make_client: MakeClient) -> None:
    client = make_client(security={"signing_keys": [KEY, KEY2]})
    urls = ImageUrls("http://testserver", key=KEY)
    response = client.get(urls.url("chelsea.png", w=120, h=80, fit=Fit.COVER, fm=Format.PNG))
    assert response.headers["content-type"] == "image/png"
    assert image_size(response) == (120, 80)
    # bools, floats and plain strings are written as the server parses them
    assert image_size(client.get(urls.url("/chelsea.png", w=100, dpr=2.0, enlarge=False, fit="inside")))[0] == 200
    # a URL built with the second (rotation) key verifies too
    assert image_size(client.get(ImageUrls("", key=KEY2).url("chelsea.png", w=77)))[0] == 77


def test_client_srcset_urls_are_accepted(make_client: MakeClient) -> None:
    client = make_client(security={"signing_keys": [KEY]})
    srcset = ImageUrls("http://testserver", key=KEY).srcset("chelsea.png", [100, 200, 300], q=70)
    entries = [entry.rsplit(" ", 1) for entry in srcset.split(", ")]
    assert [descriptor for _, descriptor in entries] == ["100w", "200w", "300w"]
    for url, descriptor in entries:
        assert url.startswith("http://testserver/img/chelsea.png?")
        assert image_size(client.get(url))[0] == int(descriptor[:-1])


def test_client_expires_in_is_signed(make_client: MakeClient) -> None:
    client = make_client(security={"signing_keys": [KEY]})
    urls = ImageUrls("", key=KEY)
    url = urls.url("chelsea.png", w=100, expires_in=600)
    expires = int(dict(parse_qsl(urlsplit(url).query))["expires"])
    assert int(time.time()) + 590 <= expires <= int(time.time()) + 600
    assert image_size(client.get(url))[0] == 100
    assert_problem(client.get(urls.url("chelsea.png", w=100, expires_in=-10)), 403)


def test_client_percent_encodes_paths(make_client: MakeClient, source_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub dir").mkdir(parents=True)
    shutil.copy(source_root / "chelsea.png", root / "sub dir" / "a b#1?.png")
    shutil.copy(source_root / "chelsea.png", root / "café.png")
    client = make_client(security={"signing_keys": [KEY]}, source={"local_root": root})
    urls = ImageUrls("", key=KEY)
    target = urls.url("sub dir/a b#1?.png", w=40)
    assert target.startswith("/img/sub%20dir/a%20b%231%3F.png?w=40&s=")
    assert target == signed("/img/sub%20dir/a%20b%231%3F.png?w=40")
    assert image_size(client.get(target))[0] == 40
    target = urls.url("café.png", w=30)
    assert target == signed("/img/caf%C3%A9.png?w=30")
    assert image_size(client.get(target))[0] == 30


def test_client_without_key_builds_unsigned_urls(client: TestClient) -> None:
    url = ImageUrls().url("chelsea.png", w=60)
    assert url == "/img/chelsea.png?w=60"
    assert image_size(client.get(url))[0] == 60


@pytest.mark.parametrize(
    "options",
    [{"w": 0}, {"w": "abc"}, {"w": 99999}, {"fit": "sideways"}, {"zoom": 2}, {"w": 10, "width": 10}, {"s": "abc"}],
)
def test_client_rejects_invalid_options_locally(options: dict[str, Any]) -> None:
    with pytest.raises(BadParameter):
        ImageUrls("https://img.example.com", key=KEY).url("chelsea.png", **options)
