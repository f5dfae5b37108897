"""Presets (named option sets, presets-only mode) and the width ladder (off, snap, strict), through HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from imgproxy.settings import LimitsSettings, Settings, default_ladder
from tests.conftest import assert_problem, decode

KEY = "k3y-0123456789abcdefXYZ"
PRESETS = {"thumb": "w=200&h=200&fit=cover", "wide": "width=250", "png": "fm=png&q=50"}
CHELSEA = (451, 300)

MakeClient = Callable[..., TestClient]


def signed(target: str, key: str = KEY) -> str:
    digest = hmac.new(key.encode(), target.encode(), hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    return target + ("&" if "?" in target else "?") + "s=" + sig


def snap_up(value: int, ladder: list[int]) -> int:
    """The first ladder width at or above `value` (the top one when `value` is above it)."""
    return next((width for width in ladder if width >= value), ladder[-1])


def image_size(response: Any) -> tuple[int, int]:
    assert response.status_code == 200, response.text
    size: tuple[int, int] = decode(response.content).size
    return size


def fetch_widths(client: TestClient, widths: Iterable[int], path: str = "/img/chelsea.png") -> list[str]:
    """GET each width; the X-Cache values, in order."""
    states = []
    for width in widths:
        response = client.get(f"{path}?w={width}")
        assert response.status_code == 200, response.text
        states.append(response.headers["x-cache"])
    return states


# --- presets -------------------------------------------------------------------------------------------------------


def test_preset_applies_its_options(make_client: MakeClient) -> None:
    client = make_client(presets=PRESETS)
    assert image_size(client.get("/img/chelsea.png?preset=thumb")) == (200, 200)
    assert image_size(client.get("/img/chelsea.png?preset=wide")) == (250, round(250 * 300 / 451))
    response = client.get("/img/chelsea.png?preset=png")
    assert response.headers["content-type"] == "image/png"
    assert image_size(response) == CHELSEA


def test_request_options_override_the_preset(make_client: MakeClient) -> None:
    client = make_client(presets=PRESETS)
    assert image_size(client.get("/img/chelsea.png?preset=thumb&w=100")) == (100, 200)
    assert image_size(client.get("/img/chelsea.png?preset=thumb&width=120")) == (120, 200)  # by canonical name
    assert image_size(client.get("/img/chelsea.png?preset=wide&w=100"))[0] == 100  # preset alias, request name
    assert image_size(client.get("/img/chelsea.png?w=100&preset=thumb")) == (100, 200)  # order does not matter
    assert image_size(client.get("/img/chelsea.png?preset=thumb&fit=inside")) == (200, 133)


@pytest.mark.parametrize(
    ("presets", "query", "size"),
    [
        ({"square": "resize=200x200&fit=fill"}, "preset=square&w=100", (100, 200)),
        ({"thumb": "w=200&h=200&fit=fill"}, "preset=thumb&resize=100x50", (100, 50)),
    ],
)
def test_request_size_overrides_a_preset_size_spelt_differently(
    make_client: MakeClient, presets: dict[str, str], query: str, size: tuple[int, int]
) -> None:
    client = make_client(presets=presets)
    assert image_size(client.get(f"/img/chelsea.png?{query}")) == size


def test_unknown_preset_is_400_naming_it(make_client: MakeClient) -> None:
    client = make_client(presets=PRESETS)
    body = assert_problem(client.get("/img/chelsea.png?preset=nope"), 400)
    assert body["param"] == "preset"
    assert "unknown preset" in body["detail"]
    assert all(name in body["detail"] for name in PRESETS)  # says which ones exist
    assert_problem(client.get("/img/chelsea.png?preset="), 400)


def test_preset_without_any_configured_is_400(client: TestClient) -> None:
    assert assert_problem(client.get("/img/chelsea.png?preset=thumb"), 400)["param"] == "preset"


def test_preset_given_twice_is_400(make_client: MakeClient) -> None:
    client = make_client(presets=PRESETS)
    assert assert_problem(client.get("/img/chelsea.png?preset=thumb&preset=wide"), 400)["param"] == "preset"


def test_presets_only_mode(make_client: MakeClient) -> None:
    client = make_client(presets=PRESETS, security={"presets_only": True})
    assert image_size(client.get("/img/chelsea.png?preset=thumb")) == (200, 200)
    body = assert_problem(client.get("/img/chelsea.png?w=100"), 400)
    assert body["param"] == "w"
    assert "preset" in body["detail"]
    assert_problem(client.get("/img/chelsea.png?preset=thumb&w=100"), 400)  # no overrides either
    assert_problem(client.get("/img/chelsea.png?fm=png"), 400)
    assert_problem(client.get("/img/chelsea.png"), 400)  # no options at all is not a preset
    assert_problem(client.get("/img/chelsea.png?preset=nope"), 400)


def test_presets_only_mode_with_signatures(make_client: MakeClient) -> None:
    client = make_client(presets=PRESETS, security={"presets_only": True, "signing_keys": [KEY]})
    assert image_size(client.get(signed("/img/chelsea.png?preset=thumb"))) == (200, 200)
    assert_problem(client.get("/img/chelsea.png?preset=thumb"), 403)
    assert_problem(client.get(signed("/img/chelsea.png?w=100")), 400)


@pytest.mark.parametrize("query", ["w=abc", "zoom=2", "w=100&w=200", "w=", "s=abc", "fit=sideways", "w=99999"])
def test_invalid_preset_is_refused_at_start_up(make_settings: Callable[..., Settings], query: str) -> None:
    with pytest.raises(ValidationError, match="bad"):
        make_settings(presets={"good": "w=10", "bad": query})


def test_presets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPROXY_PRESETS", '{"thumb": "w=200&h=200&fit=cover"}')
    assert Settings(_env_file=None).presets == {"thumb": "w=200&h=200&fit=cover"}
    monkeypatch.setenv("IMGPROXY_PRESETS", '{"thumb": "w=abc"}')
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


# --- ladder settings ---------------------------------------------------------------------------------------------


def test_default_ladder_shape() -> None:
    ladder = default_ladder()
    assert ladder[0] == 16 and ladder[-1] == 4096
    assert ladder == sorted(set(ladder))
    for low, high in pairwise(ladder[:-1]):  # the last step is cut short at 4096
        assert high / low <= 1.14  # steps of about 8% (rounding to even numbers widens the smallest ones)
        if low >= 100:
            assert 1.06 <= high / low <= 1.10
    assert len(ladder) < 100  # bounded: far fewer variants than one per pixel


def test_ladder_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LimitsSettings().ladder == "off"  # the default: a first try gets exactly what it asked for
    assert LimitsSettings().ladder_widths == default_ladder()
    monkeypatch.setenv("IMGPROXY_LIMITS__LADDER", "snap")
    monkeypatch.setenv("IMGPROXY_LIMITS__LADDER_WIDTHS", "[100, 200, 400]")
    limits = Settings(_env_file=None).limits
    assert (limits.ladder, limits.ladder_widths) == ("snap", [100, 200, 400])
    with pytest.raises(ValidationError):
        LimitsSettings(ladder="fuzzy")
    for widths in ([], [200, 100], [0, 100], [100, 100]):
        with pytest.raises(ValidationError):
            LimitsSettings(ladder_widths=widths)


# --- ladder: off -------------------------------------------------------------------------------------------------


def test_off_gives_exact_widths(make_client: MakeClient) -> None:
    for client in (make_client(), make_client(limits={"ladder": "off"})):
        assert image_size(client.get("/img/chelsea.png?w=301"))[0] == 301
        assert image_size(client.get("/img/chelsea.png?w=303"))[0] == 303
        assert image_size(client.get("/img/chelsea.png?w=100&h=101&fit=fill")) == (100, 101)


def test_off_caches_one_entry_per_width(make_client: MakeClient) -> None:
    client = make_client()
    cache = client.app.state.service.cache  # type: ignore[attr-defined]
    before = len(cache)
    assert fetch_widths(client, range(120, 140)) == ["MISS"] * 20
    assert len(cache) - before == 20


# --- ladder: snap ------------------------------------------------------------------------------------------------


def test_snap_rounds_up_to_the_next_ladder_width(make_client: MakeClient) -> None:
    ladder = default_ladder()
    expected = snap_up(301, ladder)
    assert expected >= 301 and expected in ladder
    client = make_client(limits={"ladder": "snap"})
    assert image_size(client.get("/img/chelsea.png?w=301"))[0] == expected
    assert image_size(client.get(f"/img/chelsea.png?w={expected}"))[0] == expected  # on the ladder: unchanged
    size = image_size(client.get("/img/chelsea.png?w=100&h=101&fit=fill"))
    assert size == (snap_up(100, ladder), snap_up(101, ladder))  # h too


def test_snap_near_widths_share_one_cache_entry(make_client: MakeClient) -> None:
    ladder = default_ladder()
    assert snap_up(301, ladder) == snap_up(305, ladder)
    client = make_client(limits={"ladder": "snap"})
    first = client.get("/img/chelsea.png?w=301")
    second = client.get("/img/chelsea.png?w=305")
    assert first.status_code == second.status_code == 200
    assert first.headers["etag"] == second.headers["etag"]
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.content == second.content


def test_snap_is_in_device_pixels_after_dpr(make_client: MakeClient) -> None:
    client = make_client(limits={"ladder": "snap", "ladder_widths": [100, 200, 400]})
    assert image_size(client.get("/img/chelsea.png?w=150&dpr=2"))[0] == 400  # 300 device pixels → 400
    assert image_size(client.get("/img/chelsea.png?w=60&dpr=1.5"))[0] == 100  # 90 → 100


def test_snap_with_custom_ladder_widths(make_client: MakeClient) -> None:
    client = make_client(limits={"ladder": "snap", "ladder_widths": [100, 200, 400]})
    assert image_size(client.get("/img/chelsea.png?w=150"))[0] == 200
    assert image_size(client.get("/img/chelsea.png?w=50"))[0] == 100
    assert image_size(client.get("/img/chelsea.png?w=200"))[0] == 200
    assert image_size(client.get("/img/chelsea.png?w=401"))[0] == 400  # above the top: the top
    assert client.get("/img/chelsea.png?w=450").headers["x-cache"] == "HIT"


def test_snap_cache_busting_loop_is_bounded(make_client: MakeClient) -> None:
    ladder = default_ladder()
    client = make_client(limits={"ladder": "snap"})
    cache = client.app.state.service.cache  # type: ignore[attr-defined]
    before = len(cache)
    widths = range(100, 300)
    states = fetch_widths(client, widths)
    assert len(states) == 200
    expected = {snap_up(width, ladder) for width in widths}
    added = len(cache) - before
    assert added == len(expected) == states.count("MISS")
    assert added <= len(ladder)


# --- ladder: strict ----------------------------------------------------------------------------------------------


def test_strict_refuses_off_ladder_sizes(make_client: MakeClient) -> None:
    ladder = default_ladder()
    assert 301 not in ladder and 101 not in ladder
    client = make_client(limits={"ladder": "strict"})
    body = assert_problem(client.get("/img/chelsea.png?w=301"), 400)
    assert body["param"] == "w"
    assert str(snap_up(301, ladder)) in body["detail"]  # says which widths are allowed
    assert assert_problem(client.get(f"/img/chelsea.png?w={ladder[10]}&h=101"), 400)["param"] == "h"


def test_strict_accepts_ladder_sizes(make_client: MakeClient) -> None:
    ladder = default_ladder()
    client = make_client(limits={"ladder": "strict"})
    for width in (ladder[20], snap_up(301, ladder)):
        assert image_size(client.get(f"/img/chelsea.png?w={width}"))[0] == width


def test_strict_with_custom_ladder_widths(make_client: MakeClient) -> None:
    client = make_client(limits={"ladder": "strict", "ladder_widths": [100, 200, 400]})
    assert image_size(client.get("/img/chelsea.png?w=200"))[0] == 200
    assert_problem(client.get("/img/chelsea.png?w=150"), 400)
    assert_problem(client.get("/img/chelsea.png?w=312"), 400)  # on the default ladder, not on this one


def test_strict_ladder_preset_is_refused_at_start_up_or_served(make_client: MakeClient) -> None:
    assert 200 not in default_ladder()
    try:
        client = make_client(presets={"thumb": "w=200&h=200&fit=cover"}, limits={"ladder": "strict"})
    except ValidationError:
        return  # refused at start-up: acceptable
    assert image_size(client.get("/img/chelsea.png?preset=thumb"))[0] in (200, snap_up(200, default_ladder()))


# --- signed requests are exact -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["snap", "strict"])
def test_signed_requests_get_exact_widths(make_client: MakeClient, mode: str) -> None:
    client = make_client(limits={"ladder": mode}, security={"signing_keys": [KEY]})
    assert image_size(client.get(signed("/img/chelsea.png?w=301")))[0] == 301
    assert image_size(client.get(signed("/img/chelsea.png?w=100&h=101&fit=fill"))) == (100, 101)
    assert image_size(client.get(signed("/img/chelsea.png?w=150&dpr=2")))[0] == 300
