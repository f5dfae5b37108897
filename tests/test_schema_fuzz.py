"""Schema fuzzing: schemathesis drives every operation of the running app's own `/openapi.json`.

Every operation (GET and HEAD of /img/{path}, /img?url=, /meta, /srcset, /healthz, /readyz, /metrics) gets
the schema's examples, its coverage phase (boundaries and missing/invalid values) and fuzzed cases, and
every response is checked: no server error, the body matches the documented schema, the Content-Type is
one documented for that status, and the status is documented. Paths and URLs are sometimes swapped for
ones that exist (a real image under the root, a loopback origin's image) so 200s are exercised too.

Runs are deterministic (`derandomize`): each operation gets schemathesis' examples and coverage phases
(~300 boundary cases for the image routes) plus 100 fuzzed cases; `IMGPROXY_SCHEMA_EXAMPLES` changes the
fuzzed count, `IMGPROXY_FUZZ_RANDOM=1` lets hypothesis pick new seeds (see SECURITY.md).

The non-slow tests at the end replay, as plain requests, the cases that earlier runs found interesting.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.settings import SAMPLES_DIR, Settings
from tests.conftest import decode
from tests.hostile import report
from tests.origin import Origin, closed_port

EXAMPLES = int(os.environ.get("IMGPROXY_SCHEMA_EXAMPLES", "100"))
DERANDOMIZE = os.environ.get("IMGPROXY_FUZZ_RANDOM", "") != "1"
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    status_code_conformance,
    response_headers_conformance,
]
IMAGES = ("photo.jpg", "alpha.png", "anim.gif", "tiny.webp", "sub/nested.png")
PROBLEM = "application/problem+json"
CASES_RUN: Counter[tuple[str, int]] = Counter()  # (operation, status) -> cases, for the closing note
FIRST_EXAMPLE: dict[tuple[str, int], str] = {}


def make_root(root: Path) -> Path:
    """Small images in every shape the routes care about (cheap to render, so fuzzing stays fast)."""
    Image.linear_gradient("L").resize((96, 64)).convert("RGB").save(root / "photo.jpg", quality=85)
    Image.new("RGBA", (40, 30), (0, 0, 255, 128)).save(root / "alpha.png")
    frames = [Image.new("P", (24, 24), i) for i in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    Image.new("RGB", (8, 8), (9, 99, 199)).save(root / "tiny.webp")
    (root / "sub").mkdir()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(root / "sub" / "nested.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return root


@pytest.fixture(scope="module")
def fuzz_origin() -> Iterator[Origin]:
    server = Origin(files={"photo.jpg": _jpeg()})
    try:
        yield server
    finally:
        server.close()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def fuzz_settings(root: Path, port: int) -> Settings:
    """Remote URLs on: only the loopback origin's port is allowed, so nothing else is ever dialled."""
    return Settings(
        _env_file=None,
        source={
            "local_root": root,
            "allowed_hosts": [f"127.0.0.1:{port}"],
            "allow_private_addresses": True,
            "timeout": 3,
        },
        limits={"workers": 2, "max_queue": 64},
        presets={"thumb": "w=32&h=32&fit=cover"},
        log={"level": "error"},
    )


class Delegate:
    """The ASGI app schemathesis calls. It builds a fresh app for every lifespan schemathesis starts (its
    pytest plugin ends the lifespan after each test, and an app's pool does not outlive its lifespan), from
    a source root and an origin that exist only at run time, so nothing starts at import or collection."""

    def __init__(self) -> None:
        self.build: Callable[[], Any] | None = None
        self.target: Any = None
        self.origin: Origin | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            assert self.build is not None, "the fuzz_app fixture has not run"
            self.target = self.build()
        assert self.target is not None, "the fuzz_app fixture has not run"
        await self.target(scope, receive, send)


DELEGATE = Delegate()
# The document every app of these settings serves at /openapi.json (test_the_fuzzed_document_is_served
# checks that the running app serves exactly this); only the root and the origin's port differ at run time.
TEMPLATE = create_app(fuzz_settings(SAMPLES_DIR, port=1))
schema = schemathesis.openapi.from_dict(TEMPLATE.openapi())
schema.app = DELEGATE
schema.location = "/openapi.json"


@pytest.fixture(scope="module", autouse=True)
def fuzz_app(tmp_path_factory: pytest.TempPathFactory, fuzz_origin: Origin) -> Iterator[Callable[[], Any]]:
    root = make_root(tmp_path_factory.mktemp("fuzz-root"))
    DELEGATE.build = lambda: create_app(fuzz_settings(root, fuzz_origin.port))
    DELEGATE.origin = fuzz_origin
    try:
        yield DELEGATE.build
    finally:
        schemathesis.python.asgi.shutdown_lifespans()  # normally done by schemathesis after each test
        if CASES_RUN:
            report(
                "schema",
                cases=sum(CASES_RUN.values()),
                by_operation_status={f"{op} {status}": n for (op, status), n in sorted(CASES_RUN.items())},
                examples={f"{op} {status}": curl for (op, status), curl in sorted(FIRST_EXAMPLE.items())},
            )
        DELEGATE.build = DELEGATE.target = DELEGATE.origin = None


def test_the_fuzzed_document_is_served(fuzz_app: Callable[[], Any]) -> None:
    """The schema fuzzed below is the one the running app serves, and it has every operation."""
    with TestClient(fuzz_app()) as client:
        served = client.get("/openapi.json").json()
    assert served == TEMPLATE.openapi()
    operations = {(method.upper(), path) for path, item in served["paths"].items() for method in item}
    assert operations == set(OPERATIONS)


OPERATIONS = [
    (method, path)
    for path in ("/img/{path}", "/img", "/meta/{path}", "/meta", "/srcset/{path}", "/healthz", "/readyz", "/metrics")
    for method in ("GET", "HEAD")
]


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """Half the time, a path that exists: fuzzed paths alone would almost only meet 404s."""
    if not path_parameters or "path" not in path_parameters:
        return st.just(path_parameters)
    real = st.sampled_from(IMAGES).map(lambda image: {**path_parameters, "path": image})
    return st.one_of(st.just(path_parameters), real)


@schema.hook
def flatmap_query(context: Any, query: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """Half the time, at most three of the generated options (all of them together nearly always conflict,
    so renders would hardly ever be reached), and, for `url`, half the time the allowed loopback origin."""
    if not query:
        return st.just(query)
    options = sorted(name for name in query if name not in ("expires", "s", "preset", "url"))
    shaped = st.just(query)
    if options:
        fewer = st.lists(st.sampled_from(options), max_size=3, unique=True).map(
            lambda keep: {name: value for name, value in query.items() if name in keep or name == "url"}
        )
        shaped = st.one_of(shaped, fewer)
    origin = DELEGATE.origin
    if "url" not in query or origin is None:
        return shaped
    urls = [origin.url_for("images/photo.jpg"), origin.url_for("status/404")]
    return shaped.flatmap(lambda q: st.one_of(st.just(q), st.sampled_from(urls).map(lambda url: {**q, "url": url})))


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=DERANDOMIZE,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms(case: schemathesis.Case) -> None:
    """Every documented operation, fuzzed: no 5xx, and every response matches its documentation."""
    response = case.call_and_validate(checks=CHECKS)
    if response.status_code >= 400 and case.method != "HEAD":
        assert response.headers["content-type"][0] == PROBLEM
    label = f"{case.method} {case.path}"
    CASES_RUN[(label, response.status_code)] += 1
    FIRST_EXAMPLE.setdefault((label, response.status_code), case.as_curl_command())


# --- regressions: cases the fuzzer turned up, replayed as plain requests ----------------------------------


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory, fuzz_origin: Origin) -> Iterator[TestClient]:
    root = make_root(tmp_path_factory.mktemp("regressions"))
    with TestClient(create_app(fuzz_settings(root, fuzz_origin.port))) as client:
        yield client


def problem(response: object, status: int) -> None:
    assert getattr(response, "status_code", None) == status, getattr(response, "text", "")
    headers = getattr(response, "headers", {})
    assert headers["content-type"] == PROBLEM
    assert headers["cache-control"] == "no-store"


REGRESSIONS: list[tuple[str, str, int]] = [
    # (method, target, status): coverage-phase boundaries and the odd values fuzzing sends
    ("GET", "/img/photo.jpg?w=0", 400),
    ("GET", "/img/photo.jpg?w=8193", 400),
    ("GET", "/img/photo.jpg?w=-1", 400),
    ("GET", "/img/photo.jpg?w=1e3", 400),
    ("GET", "/img/photo.jpg?w=%00", 400),
    ("GET", "/img/photo.jpg?fx=1.0000001", 400),
    ("GET", "/img/photo.jpg?dpr=NaN", 400),
    ("GET", "/img/photo.jpg?bg=%23", 400),
    ("GET", "/img/photo.jpg?expires=-1", 400),
    ("GET", "/img/photo.jpg?expires=99999999999999999999999999", 400),
    ("GET", "/img/photo.jpg?expires=1", 403),  # expired
    ("GET", "/img/photo.jpg?expires=99999999999", 200),
    ("GET", "/img/photo.jpg?s=", 200),  # no keys configured: a signature is ignored
    ("GET", "/img/photo.jpg?preset=nope", 400),
    ("GET", "/img/photo.jpg?preset=thumb&preset=thumb", 400),
    ("GET", "/img/%00", 404),
    ("GET", "/img/", 404),
    ("HEAD", "/img/", 404),
    ("GET", "/img/sub/", 404),
    ("GET", "/img?url=", 400),
    ("GET", "/img?url=0", 400),
    ("GET", "/img?url=http%3A%2F%2F%5B%3A%3A1%5D%2F", 403),
    ("GET", "/img?url=http://127.0.0.1:1/x.jpg", 403),  # another port: not on the allow-list
    ("GET", "/img?url=file:///etc/passwd", 400),
    ("GET", "/img?url=http://[", 403),
    ("GET", "/meta/photo.jpg?w=1", 400),
    ("GET", "/meta?url=", 400),
    ("GET", "/srcset/photo.jpg?w=0", 400),
    ("GET", "/srcset/photo.jpg?w=2731", 400),
    ("GET", "/srcset/photo.jpg?widths=", 400),
    ("GET", "/srcset/photo.jpg?widths=1,,2", 400),
    ("GET", "/srcset/photo.jpg?widths=%C2%B2", 400),  # a superscript two: isdigit() but not a number
    ("GET", "/srcset/photo.jpg?dpr=2", 400),
    ("GET", "/srcset/broken.jpg", 415),
    ("GET", "/srcset/nope.jpg", 404),
    # shapes schemathesis sends: undocumented names, tuning without its switch, non-ASCII signatures
    ("GET", "/img/photo.jpg?x-schemathesis-unknown-property=42", 400),
    ("GET", "/img/0?wm_s=0.01", 400),  # wm_s needs wm=1: a 400 before the (missing) source is looked up
    ("GET", "/img/photo.jpg?wm=1", 400),  # no watermark configured
    ("GET", "/img/photo.jpg?s=%F2%AE%8B%86%E5%9C%87ode%22", 200),  # no keys: the signature is not checked
    ("GET", "/img/sub%2Fnested.png?fit=cover", 200),  # an encoded slash is a slash in the key
    ("GET", "/meta", 400),  # url is required
    ("GET", "/meta/photo.jpg?url=http://127.0.0.1:1/x.jpg", 400),
    ("GET", "/img/photo.jpg?preset=thumb&w=9", 200),
]


@pytest.mark.parametrize("method", ["DELETE", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"])
@pytest.mark.parametrize("target", ["/img/photo.jpg", "/img", "/meta/photo.jpg", "/srcset/photo.jpg", "/healthz"])
def test_other_methods_are_405_problems(fuzz_client: TestClient, method: str, target: str) -> None:
    response = fuzz_client.request(method, target)
    problem(response, 405)
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


@pytest.mark.parametrize(("method", "target", "status"), REGRESSIONS)
def test_regression(fuzz_client: TestClient, method: str, target: str, status: int) -> None:
    response = fuzz_client.request(method, target)
    if status >= 400:
        assert response.status_code == status, response.text
        assert response.headers["cache-control"] == "no-store"
        if method == "GET":
            problem(response, status)
    else:
        assert response.status_code == status, response.text
        decode(response.content)


def test_remote_url_to_the_allowed_origin_is_served(fuzz_client: TestClient, fuzz_origin: Origin) -> None:
    """What the fuzzer's `url` substitution exercises: the allowed host:port is fetched, any other port not."""
    response = fuzz_client.get("/img", params={"url": fuzz_origin.url_for("images/photo.jpg"), "w": "20"})
    assert response.status_code == 200
    assert decode(response.content).size[0] == 20
    problem(fuzz_client.get("/img", params={"url": f"http://127.0.0.1:{closed_port()}/x.jpg"}), 403)


def head_matches_get(client: TestClient, target: str) -> None:
    got, head = client.get(target), client.head(target)
    assert head.status_code == got.status_code
    assert head.content == b""
    assert head.headers.get("content-type") == got.headers.get("content-type")


@pytest.mark.parametrize(
    "target",
    ["/img/photo.jpg?w=10", "/meta/photo.jpg", "/srcset/photo.jpg", "/img/nope.png", "/meta/broken.jpg", "/healthz"],
)
def test_head_mirrors_get(fuzz_client: TestClient, target: str) -> None:
    head_matches_get(fuzz_client, target)
