"""S3 (and S3-compatible) objects as originals, through boto3 run off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

from imgproxy.errors import OriginTimeout, OriginUnreachable, SourceNotFound, SourceTooLarge, UnsupportedImage
from imgproxy.sniff import sniff_media_type
from imgproxy.sources.http import Fetched, NotModified, Validators

_MISSING = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}


class S3Fetcher:
    def __init__(
        self, bucket: str, endpoint_url: str | None, region: str | None, max_bytes: int, timeout: float
    ) -> None:
        self.bucket = bucket
        self.max_bytes = max_bytes
        self.timeout = timeout
        # Credentials come from the usual AWS environment (variables, config files, instance roles).
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2}),
        )

    async def fetch(self, key: str, validators: Validators | None) -> Fetched:
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.to_thread(self._get, key, validators)
        except TimeoutError:
            raise OriginTimeout(f"the object store did not answer within {self.timeout:g} s") from None

    def _get(self, key: str, validators: Validators | None) -> Fetched:
        request = {"Bucket": self.bucket, "Key": key}
        if validators and validators.etag:
            request["IfNoneMatch"] = validators.etag
        with _store_errors():
            response = self._client.get_object(**request)
            data = self._read(response)
        media_type = sniff_media_type(data[:32])
        if media_type is None:
            raise UnsupportedImage("the object is not an image in a supported format")
        return Fetched(data, media_type, Validators(etag=response.get("ETag")), max_age=None)

    def _read(self, response: dict[str, Any]) -> bytes:
        body = response["Body"]
        declared = int(response.get("ContentLength", 0))
        try:
            if declared > self.max_bytes:
                raise SourceTooLarge("the object is over this server's byte budget")
            data: bytes = body.read(self.max_bytes + 1)
        finally:
            body.close()
        if len(data) > self.max_bytes:
            raise SourceTooLarge("the object is over this server's byte budget")
        if len(data) != declared:  # cut short: never keep a truncated original
            raise OriginUnreachable("the object store sent fewer bytes than it declared")
        return data


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """botocore's exceptions, as the service's errors."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 304 or code in ("304", "NotModified"):
            raise NotModified(None) from None
        if code in _MISSING or status == 404:
            raise SourceNotFound("the bucket has no such image") from None
        raise OriginUnreachable(f"the object store refused the request ({code or status})") from None
    except (ConnectTimeoutError, ReadTimeoutError):
        raise OriginTimeout("the object store did not answer in time") from None
    except (BotoCoreError, OSError):
        raise OriginUnreachable("the object store could not be reached or broke off") from None
