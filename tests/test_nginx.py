"""deploy/nginx.conf for real: nginx in front of two `imgproxy serve` replicas, all on loopback.

The committed config is rendered into a scratch directory with only its addresses and paths changed
(upstream servers, listen port, cache and temp directories, pid, logs), plus one test-only location that
prints the bucket nginx computed, so the Accept map can be compared with `imgproxy.negotiate` directly.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgproxy.negotiate import negotiate
from imgproxy.settings import SAMPLES_DIR
from tests.conftest import decode, free_port, stop_process

pytestmark = pytest.mark.nginx

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "nginx.conf"
TIMEOUT = 20.0  # seconds: every wait in this file is bounded by it
BUCKET_PATH = "/__front-bucket"

AVIF_BROWSER = "image/avif,image/webp,*/*"
WEBP_BROWSER = "image/webp,*/*"
LEGACY = "*/*"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def render_config(template: str, *, port: int, upstreams: list[int], base: Path) -> str:
    """The committed config with loopback addresses and scratch paths; every replaced text must exist."""
    replacements = [
        ("server imgproxy-1:8080", f"server 127.0.0.1:{upstreams[0]}"),
        ("server imgproxy-2:8080", f"server 127.0.0.1:{upstreams[1]}"),
        ("listen 8080;", f"listen 127.0.0.1:{port};"),
        ("/var/cache/nginx/", f"{base}/cache/"),
        ("pid /tmp/nginx.pid;", f"pid {base}/nginx.pid;"),
        ("/dev/stdout", f"{base}/access.log"),
        ("/dev/stderr", f"{base}/error.log"),
        (
            "        location = /nginx-healthz {",
            f"        location = {BUCKET_PATH} {{\n"
            "            default_type text/plain;\n"
            '            return 200 "$imgproxy_bucket|$imgproxy_save_data";\n'
            "        }\n\n"
            "        location = /nginx-healthz {",
        ),
    ]
    text = template
    for old, new in replacements:
        assert old in text, f"deploy/nginx.conf no longer contains {old!r}: update render_config()"
        text = text.replace(old, new)
    return text


@dataclass
class Replica:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Front:
    port: int
    base: Path
    replicas: list[Replica] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bucket(self, accept: bytes, save_data: bytes | None = None) -> tuple[int, str]:
        """The bucket nginx computes for these exact header bytes (a raw request: no client rewrites them)."""
        lines = [b"GET " + BUCKET_PATH.encode() + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
        lines.append(b"Accept: " + accept)
        if save_data is not None:
            lines.append(b"Save-Data: " + save_data)
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode("latin-1")


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not answer within {TIMEOUT} s:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def front() -> Iterator[Front]:
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    # Not under pytest's tmp_path (mode 0700): nginx started as root runs its workers as nobody,
    # and they must reach the cache directory.
    base = Path(tempfile.mkdtemp(prefix="imgproxy-nginx-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        base.chmod(0o755)
        (base / "cache").mkdir()
        images = base / "images"
        images.mkdir()
        for name in ("chelsea.png", "coffee.png", "astronaut.png"):
            shutil.copy(SAMPLES_DIR / name, images / name)

        front = Front(port=free_port(), base=base)
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("IMGPROXY_")}
        env |= {
            "IMGPROXY_SOURCE__LOCAL_ROOT": str(images),
            "IMGPROXY_LOG__LEVEL": "warning",
            "IMGPROXY_LIMITS__WORKERS": "2",
            "IMGPROXY_HTTP__CLIENT_HINTS": "true",
        }
        command = str(Path(sys.executable).with_name("imgproxy"))
        for index in (1, 2):
            port = free_port()
            log = base / f"replica-{index}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [command, "serve", "--host", "127.0.0.1", "--port", str(port)],
                    cwd=base,  # no .env here
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            processes.append(process)
            front.replicas.append(Replica(port, process, log))
        for replica in front.replicas:
            wait_until_serving(replica.url + "/healthz", replica.process, replica.log)

        config = base / "nginx.conf"
        config.write_text(
            render_config(CONFIG.read_text(), port=front.port, upstreams=[r.port for r in front.replicas], base=base)
        )
        nginx_log = base / "nginx.out"
        with nginx_log.open("wb") as out:
            process = subprocess.Popen(
                [nginx, "-p", str(base), "-c", str(config), "-g", "daemon off;"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        wait_until_serving(front.url + "/nginx-healthz", process, nginx_log)
        yield front
    finally:
        for process in reversed(processes):
            stop_process(process, TIMEOUT)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def http(front: Front) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=front.url, timeout=TIMEOUT) as client:
        yield client


def get(http: httpx.Client, target: str, accept: str, **headers: str) -> httpx.Response:
    response = http.get(target, headers={"Accept": accept, **headers})
    assert response.status_code == 200, response.text
    return response


def image_requests(replica: Replica) -> float:
    """Image requests this replica has answered, from its own /metrics."""
    text = httpx.get(replica.url + "/metrics", timeout=TIMEOUT).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "imgproxy_http_requests_total" and sample.labels.get("route", "").startswith("/img")
    )


# --- the format bucket ------------------------------------------------------------------------------------


def test_each_bucket_gets_its_own_format_then_a_front_cache_hit(http: httpx.Client) -> None:
    target = "/img/chelsea.png?w=120"
    expected = {AVIF_BROWSER: "AVIF", WEBP_BROWSER: "WEBP", LEGACY: "JPEG"}
    bodies: dict[str, bytes] = {}
    for accept, fmt in expected.items():
        miss = get(http, target, accept)
        hit = get(http, target, accept)
        assert (miss.headers["x-front-cache"], hit.headers["x-front-cache"]) == ("MISS", "HIT"), accept
        for response in (miss, hit):
            assert decode(response.content).format == fmt, accept
            assert response.headers["content-type"] == f"image/{fmt.lower()}"
            assert "accept" in response.headers["vary"].lower()  # clients and CDNs still see Vary
        assert hit.content == miss.content
        bodies[accept] = hit.content
    # Interleaved again, each still its own bucket's bytes, from the front cache.
    for accept, fmt in expected.items():
        response = get(http, target, accept)
        assert response.headers["x-front-cache"] == "HIT"
        assert response.content == bodies[accept]
        assert decode(response.content).format == fmt


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", "AVIF"),  # Chrome
        ("image/avif,image/webp,*/*", "AVIF"),  # Firefox
        ("image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,*/*;q=0.5", "AVIF"),
        ("image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5", "WEBP"),  # older Safari
        ("image/avif;q=0, image/webp", "WEBP"),  # q=0 excludes
        ("IMAGE/WEBP ; Q = 0.5", "WEBP"),
        ("image/png,image/*;q=0.8,*/*;q=0.5", "JPEG"),  # wildcards never name a format
        ("image/avif;q=0.000,image/webp;q=0", "JPEG"),
    ],
)
def test_other_accept_strings_share_their_bucket_entry(http: httpx.Client, accept: str, fmt: str) -> None:
    """Thousands of Accept strings, three entries: a browser's own string hits the entry its bucket made."""
    target = "/img/coffee.png?w=90"
    bucket_accept = {"AVIF": AVIF_BROWSER, "WEBP": WEBP_BROWSER, "JPEG": LEGACY}[fmt]
    get(http, target, bucket_accept)  # make sure the bucket's entry exists
    response = get(http, target, accept)
    assert response.headers["x-front-cache"] == "HIT"
    assert decode(response.content).format == fmt


def accept_corpus(count: int, seed: int = 20261124) -> list[bytes]:
    """Accept headers built from the pieces that trip a hand-written parser: q syntax, case, spacing."""
    types = [b"image/avif", b"image/webp", b"IMAGE/AVIF", b"Image/WebP", b"image/avifs", b"image/webpx", b"image/*"]
    types += [b"*/*", b"text/html", b"ximage/webp", b"image/ avif", b"image/png", b""]
    params = [b";q=0", b";q=0.0", b";q=0.000", b";q=0.0000", b";q=0.001", b";q=0.01", b";q=0.5", b";q=1"]
    params += [b";q=1.0", b";q=1.000", b";q=1.0000", b";q=1.", b";q=0.", b";q=abc", b";Q=0", b"; q = 0 "]
    params += [b";q= 0.5 ", b";level=1", b";q=0;q=1", b";q=1;q=0", b";q", b";q=", b";=1", b";qq=0", b";q=0=1"]
    params += [b";;q=0", b";\tq\t=\t0", b";q=\xa00", b";q=02", b";q=-1", b";q=inf", b";q=1e0", b";q=0.5x"]
    spaces = [b"", b" ", b"\t", b"  ", b"\xa0", b"\x85"]
    rnd = random.Random(seed)
    corpus = []
    for _ in range(count):
        items = []
        for _ in range(rnd.choice([1, 1, 2, 3, 4, 5])):
            item = rnd.choice(spaces) + rnd.choice(types) + rnd.choice(spaces)
            item += b"".join(rnd.choice(params) for _ in range(rnd.choice([0, 0, 1, 2, 3])))
            items.append(item + rnd.choice(spaces))
        corpus.append(b",".join(items))
    # The service reads the first 64 items only.
    for before in (62, 63, 64, 65):
        corpus.append(b",".join([b"text/html"] * before + [b"image/avif", b"image/webp"]))
        corpus.append(b",".join([b"text/html"] * before + [b"image/webp"]))
    return corpus


def test_accept_map_agrees_with_the_service_negotiation(front: Front) -> None:
    corpus = [
        b"image/avif",
        b"image/avif;q=0",
        b"image/avif; q=0.0, image/webp; q=0.001",
        b"image/avif;q=0, image/avif",  # the highest q of a repeated type
        b"image/*, */*",
        b"image/avif\xa0",  # Python's str.strip() trims NBSP, so the service counts this as AVIF
        b"image/avif\x1c;q=1",
        b"image/avif;q=0.5\x0b",
        *accept_corpus(400),
    ]
    for accept in corpus:
        status, body = front.bucket(accept)
        assert status == 200, accept
        assert body == f"{negotiate(accept.decode('latin-1'), True).value}|", accept


@pytest.mark.parametrize("value", [b"on", b"On", b" ON ", b"\ton", b"off", b"1", b"on, on", b"onn"])
def test_save_data_map_agrees_with_the_service(front: Front, value: bytes) -> None:
    status, body = front.bucket(b"*/*", save_data=value)
    assert status == 200
    on = value.decode("latin-1").strip().lower() == "on"  # routes.target_of
    assert body == ("legacy|on" if on else "legacy|")


# --- what the cache stores ----------------------------------------------------------------------------------


def test_save_data_is_a_separate_entry(http: httpx.Client) -> None:
    target = "/img/astronaut.png?w=200"
    plain = get(http, target, WEBP_BROWSER)
    saving = get(http, target, WEBP_BROWSER, **{"Save-Data": "on"})
    assert (plain.headers["x-front-cache"], saving.headers["x-front-cache"]) == ("MISS", "MISS")
    assert len(saving.content) < len(plain.content)  # the lower default quality
    assert get(http, target, WEBP_BROWSER, **{"Save-Data": "on"}).content == saving.content
    again = get(http, target, WEBP_BROWSER)
    assert again.headers["x-front-cache"] == "HIT"
    assert again.content == plain.content


def test_conditional_request_is_answered_by_the_front(http: httpx.Client) -> None:
    target = "/img/coffee.png?w=70"
    first = get(http, target, WEBP_BROWSER)
    response = http.get(target, headers={"Accept": WEBP_BROWSER, "If-None-Match": first.headers["etag"]})
    assert response.status_code == 304
    assert response.headers["x-front-cache"] == "HIT"


@pytest.mark.parametrize(("target", "status"), [("/img/missing.png?w=10", 404), ("/img/chelsea.png?w=abc", 400)])
def test_errors_are_never_stored(http: httpx.Client, target: str, status: int) -> None:
    for _ in range(2):
        response = http.get(target, headers={"Accept": WEBP_BROWSER})
        assert response.status_code == status
        assert response.headers["x-front-cache"] == "MISS"


def test_responses_varying_on_client_hints_are_not_stored(http: httpx.Client) -> None:
    """w=auto varies on Sec-CH-Width, which is not in the key: such responses pass through unstored."""
    widths = []
    for hint in ("100", "100", "300"):
        response = get(http, "/img/chelsea.png?w=auto", WEBP_BROWSER, **{"Sec-CH-Width": hint})
        assert response.headers["x-front-cache"] == "MISS"
        assert "sec-ch-width" in response.headers["vary"].lower()
        widths.append(decode(response.content).width)
    assert widths[0] == widths[1] < widths[2]


# --- several replicas (keep last: it stops one of them) -------------------------------------------------------


def test_balances_over_replicas_and_survives_losing_one(front: Front, http: httpx.Client) -> None:
    before = [image_requests(replica) for replica in front.replicas]
    for width in range(31, 37):
        get(http, f"/img/chelsea.png?w={width}", WEBP_BROWSER)
    after = [image_requests(replica) for replica in front.replicas]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)  # both replicas served

    cached = get(http, "/img/chelsea.png?w=31", WEBP_BROWSER)
    assert cached.headers["x-front-cache"] == "HIT"

    gone, survivor = front.replicas
    stop_process(gone.process, TIMEOUT)
    served_before = image_requests(survivor)
    for width in range(41, 51):  # new URLs: every one needs a replica
        response = get(http, f"/img/chelsea.png?w={width}", WEBP_BROWSER)
        assert response.headers["x-front-cache"] == "MISS"
        image = decode(response.content)
        assert (image.format, image.width) == ("WEBP", width)
    assert image_requests(survivor) - served_before == 10
    for width in (31, *range(41, 51)):  # stored as well, the answers retried on the survivor included
        assert get(http, f"/img/chelsea.png?w={width}", WEBP_BROWSER).headers["x-front-cache"] == "HIT"
