"""The playground page (GET /) in real headless Chromium, against a real uvicorn server on an ephemeral port.

Chromium is Debian's (`apt-get install chromium`), driven by Playwright for Python through
`executable_path`: no browser is downloaded. Without Playwright or Chromium these tests are skipped on a
developer's machine and fail in CI (where `CI` is set), so a missing install step cannot pass unnoticed.
A full-page screenshot is saved to test-artifacts/playground.png (and to $IMGPROXY_ARTIFACTS/ if set).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.settings import Settings
from tests.conftest import serving

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    if os.environ.get("CI"):
        raise
    pytest.skip("Playwright for Python is not installed (pip install playwright)", allow_module_level=True)

CHROMIUM = Path(os.environ.get("IMGPROXY_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium dials out at start-up (and a closed network refuses it).
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT = 10.0  # seconds: every wait in this file is bounded by it
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
KEY = "k3y-0123456789abcdefXYZ"

# The result is ready when its stats describe the URL in the URL field and the <img> has decoded.
RESULT_READY = """() => {
  const stats = document.getElementById("result-stats");
  const img = document.getElementById("result");
  return stats.dataset.state === "ready" && stats.dataset.url === document.getElementById("url").value
    && img.src === stats.dataset.url && img.complete && img.naturalWidth > 0;
}"""
RESULT_WIDTH = """(w) => {
  const img = document.getElementById("result");
  return new URL(img.src).searchParams.get("w") === String(w) && img.complete && img.naturalWidth === w;
}"""
SRCSET_LOADED = """() => {
  const img = document.getElementById("srcset-img");
  return img.complete && img.naturalWidth > 0 && img.currentSrc !== ""
    && document.getElementById("srcset-picked").dataset.width !== undefined;
}"""


# --- the server ---


def running(settings: Settings) -> AbstractContextManager[str]:
    """The app in a real uvicorn, in a thread, on a port the OS picked; its origin; always stopped."""
    return serving(create_app(settings), timeout=TIMEOUT)


@pytest.fixture
def serve(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., str]]:
    """Start a server with these settings groups (bundled samples and test images as the root)."""
    with ExitStack() as stack:

        def start(**groups: Any) -> str:
            groups.setdefault("log", {"level": "warning"})
            return stack.enter_context(running(make_settings(**groups)))

        yield start


# --- the browser ---


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():  # pragma: no cover - depends on the machine
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Tab:
    """A page in its own browser context, with what it logged and requested."""

    page: Page
    origin: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def goto(self, fragment: str = "") -> None:
        response = self.page.goto(f"{self.origin}/{fragment}")
        assert response is not None
        assert response.status == 200

    def wait(self, script: str, arg: Any = None) -> None:
        self.page.wait_for_function(script, arg=arg, timeout=TIMEOUT * 1000)

    def value(self, selector: str) -> str:
        return self.page.input_value(selector)

    def data(self, selector: str, name: str) -> str | None:
        return self.page.get_attribute(selector, f"data-{name}")

    def set(self, selector: str, value: str) -> None:
        """Type into a control as a person would: input events, then change."""
        self.page.fill(selector, value)
        self.page.dispatch_event(selector, "change")


@pytest.fixture
def open_tab(browser: Browser) -> Iterator[Callable[..., Tab]]:
    """A fresh context per page: its own HTTP cache, viewport and device pixel ratio."""
    with ExitStack() as stack:

        def open_(origin: str, width: int = 1280, height: int = 900, dpr: float = 1) -> Tab:
            context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=dpr)
            stack.callback(context.close)
            context.set_default_timeout(TIMEOUT * 1000)
            tab = Tab(context.new_page(), origin)

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    tab.errors.append(message.text)

            def on_failed(request: Request) -> None:
                tab.failed.append(f"{request.url}: {request.failure}")

            tab.page.on("console", on_console)
            tab.page.on("pageerror", lambda error: tab.errors.append(f"uncaught: {error}"))
            tab.page.on("request", lambda request: tab.requests.append(request.url))
            tab.page.on("requestfailed", on_failed)
            return tab

        yield open_


def save_screenshot(page: Page, name: str = "playground.png") -> None:
    """A full-page screenshot in test-artifacts/ and, when IMGPROXY_ARTIFACTS names a folder, there too."""
    targets = [ARTIFACTS]
    if os.environ.get("IMGPROXY_ARTIFACTS"):
        targets.append(Path(os.environ["IMGPROXY_ARTIFACTS"]))
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name), full_page=True)
        assert (folder / name).stat().st_size > 10_000


# --- the tests ---


def test_page_loads_with_no_errors_and_no_foreign_requests(
    serve: Callable[..., str], open_tab: Callable[..., Tab]
) -> None:
    origin = serve()
    tab = open_tab(origin)
    tab.goto()
    tab.wait(RESULT_READY)
    tab.wait(
        "() => document.getElementById('original').complete && document.getElementById('original-bytes')"
        ".dataset.value !== undefined"
    )
    tab.wait(SRCSET_LOADED)
    page = tab.page

    options = page.eval_on_selector_all("#image option", "options => options.map(o => o.value)")
    assert {"chelsea.png", "coffee.png", "astronaut.png", "landscape.jpg", "sub/nested.png"} <= set(options)
    assert page.input_value("#image") == "chelsea.png"
    assert tab.value("#url") == f"{origin}/img/chelsea.png?w=400"
    assert page.evaluate("document.getElementById('result').naturalWidth") == 400
    # The original's facts come from /meta, its picture from a PNG rendering.
    assert page.text_content("#original-format") == "png"
    assert tab.data("#original-dims", "value") == "451x300"
    assert page.evaluate("new URL(document.getElementById('original').src).search") == "?w=640&fm=png"
    for name in ("format", "dims", "bytes", "cache", "timing"):
        assert (page.text_content(f"#result-{name}") or "—") != "—", name
    assert tab.data("#result-dims", "value") == "400x266"
    assert tab.data("#result-cache", "value") in ("MISS", "HIT")
    assert page.is_hidden("#sign-note")  # no keys: nothing to sign

    save_screenshot(page)
    assert tab.errors == []
    assert tab.failed == []
    assert tab.requests, "no request was seen"
    foreign = [url for url in tab.requests if not url.startswith(origin + "/")]
    assert foreign == [], "the page must not reach any other host"


def test_controls_update_the_result_and_its_stats(serve: Callable[..., str], open_tab: Callable[..., Tab]) -> None:
    origin = serve()
    tab = open_tab(origin)
    tab.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    tab.goto()
    tab.wait(RESULT_READY)
    page = tab.page
    first = page.get_attribute("#result", "src")

    tab.set("#w", "200")
    tab.wait(RESULT_WIDTH, 200)
    tab.wait(RESULT_READY)
    assert page.get_attribute("#result", "src") != first
    assert tab.value("#url") == page.evaluate("document.getElementById('result').src")
    assert tab.data("#result-dims", "value") == "200x133"

    page.select_option("#fm", "webp")
    tab.wait("() => document.getElementById('result-format').textContent === 'image/webp'")
    tab.wait(RESULT_READY)
    url = tab.value("#url")
    assert dict(parse_qsl(urlsplit(url).query)) == {"w": "200", "fm": "webp"}
    # The stats are those of the very URL shown: the same bytes come back to another client.
    response = httpx.get(url, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/webp"
    assert tab.data("#result-bytes", "value") == response.headers["content-length"] == str(len(response.content))
    with Image.open(io.BytesIO(response.content)) as image:
        assert (image.format, image.size) == ("WEBP", (200, 133))
    assert page.evaluate("document.getElementById('result').naturalWidth") == 200

    # The settings live in the address: a reload restores them.
    assert urlsplit(page.url).fragment == "image=chelsea.png&w=200&fm=webp"
    page.reload()
    tab.wait(RESULT_READY)
    assert (tab.value("#w"), tab.value("#fm"), tab.value("#url")) == ("200", "webp", url)

    # A bad value shows the service's own message, not a broken image.
    tab.set("#q", "101")
    tab.wait("() => document.getElementById('result-stats').dataset.state === 'error'")
    assert "q: must be an integer from 1 to 100" in (page.text_content("#result-error") or "")
    tab.set("#q", "")
    tab.wait(RESULT_READY)

    page.click("#copy")
    tab.wait("() => document.getElementById('copy-status').textContent !== ''")
    assert page.evaluate("navigator.clipboard.readText()") == url
    assert [error for error in tab.errors if "400" not in error] == []


@pytest.mark.parametrize(("width", "dpr"), [(400, 1), (400, 2)])
def test_srcset_demo_picks_the_candidate_for_the_viewport_and_dpr(
    serve: Callable[..., str], open_tab: Callable[..., Tab], width: int, dpr: int
) -> None:
    origin = serve()
    tab = open_tab(origin, width=width, height=800, dpr=dpr)
    tab.goto("#image=landscape.jpg&w=120&fm=webp")  # 1800 px wide: a long ladder; WebP encodes fast
    tab.wait(SRCSET_LOADED)
    page = tab.page
    assert page.get_attribute("#srcset-img", "sizes") == "100vw"
    assert page.evaluate("[window.innerWidth, window.devicePixelRatio]") == [width, dpr]

    api = page.evaluate("document.getElementById('srcset-api').href")
    answer = httpx.get(api, timeout=TIMEOUT).json()
    assert page.get_attribute("#srcset-img", "srcset") == answer["srcset"]
    candidates = sorted(answer["candidates"], key=lambda c: c["width"])
    needed = width * dpr  # sizes=100vw: the slot is the viewport's width, in device pixels times the DPR
    expected = next((c for c in candidates if c["width"] >= needed), candidates[-1])
    assert candidates[0]["width"] < needed <= expected["width"] < candidates[-1]["width"], "a test that can fail"

    assert page.evaluate("document.getElementById('srcset-img').currentSrc") == origin + expected["url"]
    assert tab.data("#srcset-picked", "width") == str(expected["width"])
    assert page.evaluate("document.querySelector('#srcset-candidates .picked').textContent") == expected["descriptor"]
    # naturalWidth of a w-descriptor image is the candidate's width over its density: the slot, in CSS px.
    assert page.evaluate("document.getElementById('srcset-img').naturalWidth") == width
    assert tab.errors == []
    if dpr == 1:
        tab.wait(RESULT_READY)
        save_screenshot(page, "playground-narrow.png")  # the one-column layout of a phone


def test_dev_signing_signs_the_urls(serve: Callable[..., str], open_tab: Callable[..., Tab]) -> None:
    origin = serve(security={"signing_keys": [KEY]}, http={"dev_signing": True})
    tab = open_tab(origin)
    tab.goto("#image=coffee.png&w=150")
    tab.wait(RESULT_READY)
    tab.wait(SRCSET_LOADED)
    url = tab.value("#url")
    assert url.startswith(f"{origin}/img/coffee.png?w=150&s=")
    assert tab.page.evaluate("document.getElementById('result').naturalWidth") == 150
    assert "Signed by the server" in (tab.page.text_content("#sign-note") or "")
    assert httpx.get(url, timeout=TIMEOUT).status_code == 200
    assert httpx.get(url.split("&s=")[0], timeout=TIMEOUT).status_code == 403  # the signature is what counts
    assert tab.errors == []


def test_keys_without_dev_signing_say_urls_need_signing(
    serve: Callable[..., str], open_tab: Callable[..., Tab]
) -> None:
    origin = serve(security={"signing_keys": [KEY]})
    tab = open_tab(origin)
    tab.goto("#image=coffee.png&w=150")
    tab.wait("() => document.getElementById('result-stats').dataset.state === 'error'")
    assert tab.value("#url") == f"{origin}/img/coffee.png?w=150"
    assert "requires signed URLs" in (tab.page.text_content("#sign-note") or "")
    assert "403" in (tab.page.text_content("#result-error") or "")


def test_the_playground_can_be_disabled(make_client: Callable[..., TestClient]) -> None:
    client = make_client(http={"playground": False})
    assert client.get("/").status_code == 404
    assert client.get("/playground/images").status_code == 404
    assert client.get("/img/chelsea.png?w=10").status_code == 200
    enabled = make_client()
    assert enabled.get("/").headers["content-type"].startswith("text/html")
