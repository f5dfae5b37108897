"""The S3 source against a real moto server on 127.0.0.1: resizes, missing keys, non-images, the byte
budget, one fetch for many widths, revalidation with the object's ETag, and an unreachable store."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient

import imgproxy.sources.s3
from imgproxy.sources.http import Validators
from tests.conftest import assert_problem, decode
from tests.origin import (
    Origin,
    closed_port,
    corpus_files,
    origin_fixture,  # noqa: F401
)

MakeClient = Callable[..., TestClient]
BUCKET = "imgproxy-test"
FILES = corpus_files()
SIZES = {name: Image.open(io.BytesIO(data)).size for name, data in FILES.items()}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
OBJECTS = {
    "medium.jpg": FILES["medium.jpg"],
    "photos/chelsea.png": FILES["chelsea.png"],
    "odd name+1.jpg": FILES["medium.jpg"],
    "notes.txt": b"<html>not an image, whatever the key says</html>",
    "fake.jpg": b"GIF8 is not a GIF and this is not a JPEG",
}
MOTO_START_TIMEOUT = 30.0


def _moto_server() -> Path:
    return Path(sys.executable).parent / "moto_server"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto server on a free port, with the bucket and its objects; killed whatever happens."""
    port = closed_port()
    process = subprocess.Popen(
        [str(_moto_server()), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + MOTO_START_TIMEOUT
        while True:
            assert process.poll() is None, "moto_server exited at start-up"
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=0.5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "moto_server did not answer in time"
                time.sleep(0.1)
        s3 = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        ).client("s3", endpoint_url=endpoint)
        try:
            s3.create_bucket(Bucket=BUCKET)
            for key, body in OBJECTS.items():
                s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        finally:
            s3.close()
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def bucket(s3_endpoint: str) -> Iterator[Any]:
    """A boto3 client on the test bucket, to change objects during a test."""
    s3 = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("s3", endpoint_url=s3_endpoint)
    try:
        yield s3
    finally:
        s3.close()


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials for moto (it accepts any), and nothing from this machine's AWS configuration; never IMDS."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def get_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Validators | None]]:
    """Every object-store round trip (S3Fetcher._get), with the validators it sent."""
    calls: list[tuple[str, Validators | None]] = []
    original = imgproxy.sources.s3.S3Fetcher._get

    def spy(self: imgproxy.sources.s3.S3Fetcher, key: str, validators: Validators | None) -> Any:
        calls.append((key, validators))
        return original(self, key, validators)

    monkeypatch.setattr(imgproxy.sources.s3.S3Fetcher, "_get", spy)
    return calls


def s3_client(make_client: MakeClient, endpoint: str, **groups: Any) -> TestClient:
    source = {"s3_bucket": BUCKET, "s3_endpoint_url": endpoint, **groups.pop("source", {})}
    return make_client(source=source, **groups)


def assert_image(response: httpx.Response, fmt: str, width: int, source: str) -> Image.Image:
    assert response.status_code == 200, response.text
    image = decode(response.content)
    assert image.format == fmt
    assert response.headers["content-type"] == Image.MIME[fmt]
    assert image.width == width
    source_width, source_height = SIZES[source]
    assert abs(image.height - width * source_height / source_width) <= 1, (image.size, SIZES[source])
    return image


# --- the tests ----------------------------------------------------------------------------------------------------


def test_a_resize_from_s3(make_client: MakeClient, s3_endpoint: str, get_calls: list[Any]) -> None:
    client = s3_client(make_client, s3_endpoint)
    response = client.get("/img/medium.jpg", params={"w": 320, "fm": "webp"})
    assert_image(response, "WEBP", 320, "medium.jpg")
    assert response.headers["x-cache"] == "MISS"
    assert [key for key, _ in get_calls] == ["medium.jpg"]
    response = client.get("/img/photos/chelsea.png", params={"w": 90, "fm": "png"})
    assert_image(response, "PNG", 90, "chelsea.png")


def test_keys_with_spaces_and_plus_signs(make_client: MakeClient, s3_endpoint: str, get_calls: list[Any]) -> None:
    client = s3_client(make_client, s3_endpoint)
    assert_image(client.get("/img/odd%20name%2B1.jpg", params={"w": 50, "fm": "jpeg"}), "JPEG", 50, "medium.jpg")
    assert [key for key, _ in get_calls] == ["odd name+1.jpg"]


def test_a_missing_key_is_not_found_and_not_cached(
    make_client: MakeClient, s3_endpoint: str, get_calls: list[Any]
) -> None:
    client = s3_client(make_client, s3_endpoint)
    assert_problem(client.get("/img/no/such/key.jpg", params={"w": 50}), 404)
    assert_problem(client.get("/img/no/such/key.jpg", params={"w": 50}), 404)
    assert len(get_calls) == 2


def test_an_object_appearing_later_is_served(make_client: MakeClient, s3_endpoint: str, bucket: Any) -> None:
    client = s3_client(make_client, s3_endpoint)
    assert_problem(client.get("/img/later.png", params={"w": 50}), 404)
    bucket.put_object(Bucket=BUCKET, Key="later.png", Body=FILES["chelsea.png"])
    assert_image(client.get("/img/later.png", params={"w": 50, "fm": "png"}), "PNG", 50, "chelsea.png")


@pytest.mark.parametrize("key", ["notes.txt", "fake.jpg"])
def test_a_non_image_object_is_unsupported(make_client: MakeClient, s3_endpoint: str, key: str) -> None:
    client = s3_client(make_client, s3_endpoint)
    assert_problem(client.get(f"/img/{key}", params={"w": 50}), 415)


def test_an_object_over_the_byte_budget_is_too_large(make_client: MakeClient, s3_endpoint: str) -> None:
    budget = len(FILES["medium.jpg"]) - 1
    client = s3_client(make_client, s3_endpoint, limits={"max_source_bytes": budget})
    assert_problem(client.get("/img/medium.jpg", params={"w": 50}), 413)
    # an object within the same budget is still served
    assert len(FILES["chelsea.png"]) <= budget
    assert_image(client.get("/img/photos/chelsea.png", params={"w": 60, "fm": "png"}), "PNG", 60, "chelsea.png")


def test_ten_widths_of_one_object_fetch_it_once(
    make_client: MakeClient, s3_endpoint: str, get_calls: list[Any]
) -> None:
    client = s3_client(make_client, s3_endpoint)
    widths = [64 + 32 * index for index in range(10)]
    with ThreadPoolExecutor(max_workers=len(widths)) as pool:
        responses = list(pool.map(lambda w: client.get("/img/medium.jpg", params={"w": w, "fm": "jpeg"}), widths))
    for width, response in zip(widths, responses, strict=True):
        assert_image(response, "JPEG", width, "medium.jpg")
    assert len({response.headers["etag"] for response in responses}) == 10
    assert_image(client.get("/img/medium.jpg", params={"w": 33, "fm": "png"}), "PNG", 33, "medium.jpg")
    assert [key for key, _ in get_calls] == ["medium.jpg"]  # once, for eleven widths


def test_an_expired_object_is_revalidated_and_a_changed_one_refetched(
    make_client: MakeClient, s3_endpoint: str, bucket: Any, get_calls: list[Any]
) -> None:
    bucket.put_object(Bucket=BUCKET, Key="changing.jpg", Body=FILES["medium.jpg"])
    etag = bucket.head_object(Bucket=BUCKET, Key="changing.jpg")["ETag"]
    client = s3_client(make_client, s3_endpoint, source={"cache_min_ttl": 0, "cache_max_ttl": 0})
    first = client.get("/img/changing.jpg", params={"w": 100, "fm": "png"})
    assert_image(first, "PNG", 100, "medium.jpg")

    second = client.get("/img/changing.jpg", params={"w": 100, "fm": "png"})
    assert_image(second, "PNG", 100, "medium.jpg")
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["x-cache"] == "HIT"  # the store answered 304: same version, same result
    assert get_calls[1] == ("changing.jpg", Validators(etag=etag))

    bucket.put_object(Bucket=BUCKET, Key="changing.jpg", Body=FILES["chelsea.png"])
    third = client.get("/img/changing.jpg", params={"w": 100, "fm": "png"})
    assert_image(third, "PNG", 100, "chelsea.png")
    assert third.headers["etag"] != first.headers["etag"]
    assert len(get_calls) == 3


def test_an_unreachable_store_is_a_bad_gateway(make_client: MakeClient) -> None:
    client = make_client(source={"s3_bucket": BUCKET, "s3_endpoint_url": f"http://127.0.0.1:{closed_port()}"})
    started = time.monotonic()
    assert_problem(client.get("/img/medium.jpg", params={"w": 50}), 502)
    assert_problem(client.get("/img/medium.jpg", params={"w": 50}), 502)  # not cached
    assert time.monotonic() - started < 10


def test_a_store_that_never_answers_times_out(make_client: MakeClient, origin: Origin) -> None:
    # the loopback origin's /hang route stands in for the store: the bucket name is the first path segment
    client = make_client(source={"s3_bucket": "hang", "s3_endpoint_url": origin.url, "timeout": 1})
    started = time.monotonic()
    assert_problem(client.get("/img/medium.jpg", params={"w": 50}), 504)
    assert time.monotonic() - started < 5
    assert origin.count("/hang/medium.jpg") >= 1


def test_a_store_answering_503_is_a_bad_gateway(make_client: MakeClient, origin: Origin) -> None:
    client = make_client(source={"s3_bucket": "status", "s3_endpoint_url": origin.url, "timeout": 5})
    started = time.monotonic()
    assert_problem(client.get("/img/503", params={"w": 50}), 502)
    assert time.monotonic() - started < 5
    assert origin.count("/status/503") >= 1


def test_an_object_cut_short_is_a_bad_gateway_and_not_kept(make_client: MakeClient, origin: Origin) -> None:
    # the origin's /truncated/{name} stands in for the store: half the declared bytes, then it hangs up
    client = make_client(source={"s3_bucket": "truncated", "s3_endpoint_url": origin.url, "timeout": 5})
    first = client.get("/img/medium.jpg", params={"w": 50})
    second = client.get("/img/medium.jpg", params={"w": 60})
    assert_problem(first, 502)
    assert_problem(second, 502)
    assert origin.count("/truncated/medium.jpg") == 2  # the failure was not kept
