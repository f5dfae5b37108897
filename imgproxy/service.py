"""The request flow, in order, free of HTTP types:

verify signature → expand preset → parse options → ladder → negotiate format → locate source
→ key + ETag → result cache → coalesced render in the pool → store.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import httpx
from cachetools import LRUCache
from PIL import Image

from imgproxy import hints, signing, srcset
from imgproxy.cache import CachedImage, Coalescer, result_cache
from imgproxy.client import ImageUrls
from imgproxy.errors import BadParameter, Forbidden, Overloaded, RenderTimeout
from imgproxy.limiter import WorkLimiter
from imgproxy.metrics import Metrics
from imgproxy.negotiate import negotiate, output_format
from imgproxy.options import (
    Format,
    Limits,
    Options,
    apply_dpr,
    apply_ladder,
    canonical,
    expand_preset,
    parse_options,
)
from imgproxy.pipeline import heif
from imgproxy.pipeline.color import to_srgb
from imgproxy.pipeline.decode import DECODERS
from imgproxy.pipeline.meta import describe
from imgproxy.pipeline.render import RenderContext, render
from imgproxy.responses import etag_of
from imgproxy.settings import Settings
from imgproxy.shared_cache import SharedCache
from imgproxy.sources.address import host_allowed
from imgproxy.sources.base import Located, Source, check_key
from imgproxy.sources.http import HttpFetcher, new_client
from imgproxy.sources.local import LocalSource
from imgproxy.sources.remote import Fetch, RemoteSource

# Parameters about the request itself rather than the image: never part of the transform options.
CONTROL_PARAMS = ("s", "expires", "preset", "url")
# `/srcset`'s own parameters; the others are image options passed on to every candidate.
SRCSET_PARAMS = ("w", "widths", "sizes", "alt")
# Parameters that set the output size: when a request sets one, the width ladder applies.
SIZE_PARAMS = {"w", "h", "resize", "dpr"}


@dataclass(frozen=True)
class Transform:
    """A request's resolved transform: everything but the source that determines the output bytes.

    Equal (and hashed) by `digest` alone, computed once: two spellings of the same request (aliases,
    Accept headers of one bucket) are one cache entry."""

    options: Options = field(compare=False)  # dpr folded in, ladder and defaults applied
    format: Format = field(compare=False)  # explicit, or negotiated bucket (AUTO = legacy: JPEG/PNG by alpha)
    negotiated: bool = field(compare=False)  # the format came from `Accept`
    save_data: bool = field(compare=False)  # `Save-Data: on` lowered the default quality
    vary: tuple[str, ...] = field(compare=False)  # request headers the response depends on
    bare: bool = field(compare=False)  # no options at all: an untouched original may be served
    expires: str | None = field(compare=False)  # the signed expiry, checked on every use
    url: str | None = field(compare=False)  # the source URL of GET /img?url=
    digest: str = ""

    @classmethod
    def of(cls, fingerprint: str, **fields: Any) -> Transform:
        """Build it with its digest: of the fields that change the bytes, plus the encoder settings."""
        changing = (fields["options"], fields["format"], fields["negotiated"], fields["save_data"], fingerprint)
        digest = hashlib.blake2b(repr(changing).encode(), digest_size=16).hexdigest()
        return cls(**fields, digest=digest)


@dataclass(frozen=True)
class RenderKey:
    """The cache key and the ETag: which source, which version of it, which transform."""

    source: str
    version: str
    transform: Transform

    @property
    def etag(self) -> str:
        return etag_of(f"{self.source}\0{self.version}\0{self.transform.digest}")


@dataclass(frozen=True)
class MetaKey:
    source: str
    version: str

    @property
    def etag(self) -> str:
        return etag_of(repr(self))


@dataclass(frozen=True)
class Target:
    """The parts of an HTTP request the flow needs."""

    key: str  # a path under the primary source ("" for ?url=, which the service reads after the signature)
    remote: bool  # GET /img?url=...
    query: Sequence[tuple[str, str]]
    raw_path: bytes  # as sent, for the signature
    raw_query: bytes
    accept: str | None
    save_data: bool = False  # the client sent `Save-Data: on`
    hints: Mapping[str, str] = field(default_factory=dict)  # client hint headers, lower-case names


@dataclass(frozen=True)
class Request:
    key: RenderKey | MetaKey
    source: Located
    vary: tuple[str, ...] = ()  # request headers the response depends on
    bare: bool = False  # no options at all: an untouched original may be served
    timings: dict[str, float] = field(default_factory=dict)  # stages before the cache (fetching the source)


@dataclass(frozen=True)
class Result:
    image: CachedImage
    tier: str | None  # where it was found: "local", "redis", or None when rendered now
    timings: dict[str, float]


class ImageService:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics = metrics or Metrics()
        self._local_hits = metrics.cache.labels("local", "hit")
        self._local_misses = metrics.cache.labels("local", "miss")
        self.limits = Limits(settings.limits.max_width, settings.limits.max_height, settings.formats.avif)
        self.cache = result_cache(settings.cache.max_bytes, on_evict=metrics.cache.labels("local", "eviction").inc)
        self.shared = self._shared_cache()
        self.renders: Coalescer[tuple[CachedImage, str | None, dict[str, float]]] = Coalescer(metrics.coalesced.inc)
        limits = settings.limits
        self.limiter = WorkLimiter(limits.workers, limits.queue, limits.render_timeout, observe=metrics.observe_work)
        self._fingerprint = settings.output_fingerprint()
        # Parsed, verified transforms by request bytes: bounded, so varied junk only churns it.
        self._transforms: LRUCache[tuple[object, ...], Transform] = LRUCache(maxsize=4096)
        self._keys = settings.security.keys
        heic = heif.enable()
        self.decoders = (*DECODERS, "HEIF") if heic else DECODERS
        self.limits = replace(self.limits, heic=heic, watermark=settings.watermark.path is not None)
        self.watermark = self._load_watermark()
        self._client: httpx.AsyncClient | None = None
        self.source: Source = self._primary_source()
        self.url_source: RemoteSource | None = self._url_source()

    # --- lifecycle: the HTTP client belongs to the app's lifespan ---

    async def start(self) -> None:
        self._client = new_client()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self.shared is not None:
            await self.shared.aclose()
        self.limiter.shutdown()

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = new_client()  # used outside a lifespan (tests driving the ASGI app directly)
        return self._client

    async def readiness(self) -> dict[str, dict[str, object]]:
        """What /readyz reports. A Redis outage is reported but does not make the replica unready:
        requests degrade to the local cache and still succeed."""
        checks: dict[str, dict[str, object]] = {"settings": {"ok": True}}
        if isinstance(self.source, LocalSource):
            root = self.source.root
            checks["source"] = {"ok": root.is_dir() and os.access(root, os.R_OK | os.X_OK), "kind": "local"}
        else:
            checks["source"] = {"ok": True, "kind": "remote", "checked": False}
        limiter = self.limiter
        checks["capacity"] = {  # ready while a new render would still be accepted
            "ok": limiter.running + limiter.queued < limiter.workers + limiter.max_queue,
            "running": self.limiter.running,
            "queued": self.limiter.queued,
        }
        if self.shared is not None:
            checks["redis"] = {"ok": True, "reachable": await self.shared.ping()}
        return checks

    # --- the flow ---

    async def prepare(self, target: Target) -> Request:
        """Everything known before a pixel is read: bad input and bad signatures fail here, cheaply.

        The parsed, verified transform of a request is remembered by the request's exact bytes (path,
        query with its signature, the headers it depends on), so a repeated request skips straight to
        locating the source: only a signature that verified, and options that parsed, are remembered."""
        transform = self.remembered(target)
        if transform is None:
            transform = self._resolve(target)
            self._transforms[_memo_key(target)] = transform
        return await self.prepare_known(target, transform)

    def remembered(self, target: Target) -> Transform | None:
        """The transform of an identical earlier request, if it parsed and verified."""
        return self._transforms.get(_memo_key(target))

    async def prepare_known(self, target: Target, transform: Transform) -> Request:
        """The rest of `prepare` for a request whose transform is known: expiry, source, key."""
        signing.check_expiry(transform.expires, time.time())
        started = time.perf_counter()
        source = await self._locate(target, transform.url)
        fetch = self._fetch_timing(target, started)
        key = RenderKey(source.identity, source.version, transform)
        return Request(key=key, source=source, vary=transform.vary, bare=transform.bare, timings=fetch)

    def _resolve(self, target: Target) -> Transform:
        signed = signing.verify(target.raw_path, target.raw_query, self._keys)
        control, own = _split_control(target.query)
        signing.check_expiry(control.get("expires"), time.time())
        hinted: tuple[str, ...] = ()
        if self.settings.http.client_hints:
            ladder, fallback = self.settings.limits.ladder_widths, self.settings.http.auto_width
            own, hinted = hints.resolve(own, target.hints, ladder, fallback)
        items = expand_preset(own, control.get("preset"), self.settings.presets, self.settings.security.presets_only)
        requested = parse_options(items, self.limits)
        options = apply_dpr(requested, self.limits)
        # Signed URLs and presets come from the operator: they get exactly the size they name.
        if not signed and any(canonical(name) in SIZE_PARAMS for name, _ in own):
            limits = self.settings.limits
            options = apply_ladder(options, requested, limits.ladder_widths, limits.ladder)
        negotiated = options.format is Format.AUTO
        fmt = output_format(options.format, negotiate(target.accept, self.settings.formats.avif))
        save_data = target.save_data and options.quality is None and fmt is not Format.BLURHASH
        vary = (
            ("Accept",) * negotiated
            + ("Save-Data",) * (options.quality is None and fmt is not Format.BLURHASH)
            + hinted
        )
        return Transform.of(
            self._fingerprint,
            options=options,
            format=fmt,
            negotiated=negotiated,
            save_data=save_data,
            vary=vary,
            bare=not own and "preset" not in control,
            expires=control.get("expires"),
            url=control.get("url"),
        )

    async def prepare_meta(self, target: Target) -> Request:
        """`/meta`: the same signature rules and sources as images; no options."""
        signing.verify(target.raw_path, target.raw_query, self._keys)
        control, items = _split_control(target.query)
        signing.check_expiry(control.get("expires"), time.time())
        if items or "preset" in control:
            raise BadParameter((items[0][0] if items else "preset"), "/meta takes no options")
        started = time.perf_counter()
        source = await self._locate(target, control.get("url"))
        fetch = self._fetch_timing(target, started)
        return Request(key=MetaKey(source.identity, source.version), source=source, timings=fetch)

    async def srcset(self, target: Target) -> dict[str, Any]:
        """`/srcset`: candidate URLs (signed with the first key, when there are keys) and markup."""
        signing.verify(target.raw_path, target.raw_query, self._keys)
        control, own = _split_control(target.query)
        signing.check_expiry(control.get("expires"), time.time())
        extra = {name: value for name, value in own if name in SRCSET_PARAMS}
        passed = [(name, value) for name, value in own if name not in SRCSET_PARAMS]
        parse_options(passed, self.limits)  # a bad or repeated option fails here, not in every candidate
        # Canonical names: a candidate adds its own w and q, which must not meet an alias (width=, quality=).
        options = {canonical(name) or name: value for name, value in passed}
        for name, value in passed:  # named as the client spelt them
            if canonical(name) not in srcset.PASSED_ON:
                raise BadParameter(
                    name,
                    "changes the output size, which /srcset computes; allowed: " + ", ".join(sorted(srcset.PASSED_ON)),
                )
            if canonical(name) == "fm" and value == Format.BLURHASH.value:
                raise BadParameter(name, "blurhash is text: an <img> cannot show it")
        fixed = _int_param(extra, "w", 1, self.limits.max_width // 3)
        widths = _widths(extra["widths"], self.limits.max_width) if "widths" in extra else self.settings.srcset.widths
        facts = await self.get(await self.prepare_meta(replace(target, query=())))
        info = json.loads(facts.image.content)
        keys = self.settings.security.keys
        url_for = ImageUrls(key=keys[0].decode() if keys else None, limits=self.limits).target
        chosen = srcset.candidates(
            options,
            info["width"],
            width=fixed,
            widths=widths,
            ladder=self.settings.limits.ladder_widths,
            dpr_qualities=self.settings.srcset.dpr_qualities,
            snap=self.settings.limits.ladder != "off" and not keys,  # signed URLs are always exact
        )
        return srcset.describe(
            target.key,
            (info["width"], info["height"]),
            chosen,
            url_for,
            sizes=extra.get("sizes"),
            fixed_width=fixed,
            alt=extra.get("alt", ""),
        )

    def cached(self, request: Request) -> Result | None:
        """The local cache alone: what a hit costs, and all it costs."""
        cached = self.cache.get(request.key)
        if cached is None:
            return None
        self._local_hits.inc()
        return Result(cached, tier="local", timings={})

    async def get(self, request: Request) -> Result:
        """Local cache, then (one caller per key) the shared tier, then a render written to both."""
        cached = self.cached(request)
        return cached if cached is not None else await self.missed(request)

    async def missed(self, request: Request) -> Result:
        """After a local miss: the shared tier, or a render (joined if one for the key is under way)."""
        self._local_misses.inc()
        started = time.perf_counter()
        (image, tier, timings), joined = await self.renders.run(request.key, lambda: self._find_or_render(request))
        if joined:  # the stages were someone else's: report only this request's own wait
            timings = {"coalesced": (time.perf_counter() - started) * 1000}
        return Result(image, tier=tier, timings={**request.timings, **timings})

    async def _find_or_render(self, request: Request) -> tuple[CachedImage, str | None, dict[str, float]]:
        key = request.key
        if self.shared is not None:
            started = time.perf_counter()
            found = await self.shared.get(key.etag)
            lookup = {"redis": (time.perf_counter() - started) * 1000}
            if found is not None:
                self._store_local(key, found)
                return found, "redis", lookup
        work = functools.partial(self._describe if isinstance(key, MetaKey) else self._transform, request)
        try:
            image, timings = await self.limiter.run(work)
        except Overloaded:
            self.metrics.rejected.labels("queue_full").inc()
            raise
        except RenderTimeout:
            self.metrics.rejected.labels("render_timeout").inc()
            raise
        self.metrics.observe_stages(timings)
        self._store_local(key, image)  # only reached on success: errors are never cached
        if self.shared is not None:
            await self.shared.put(key.etag, image)
            timings = {**lookup, **timings}
        return image, None, timings

    def _fetch_timing(self, target: Target, started: float) -> dict[str, float]:
        """Server-Timing `fetch` for sources that are fetched (a local stat is not worth reporting)."""
        if target.remote or not isinstance(self.source, LocalSource):
            return {"fetch": (time.perf_counter() - started) * 1000}
        return {}

    def _store_local(self, key: RenderKey | MetaKey, image: CachedImage) -> None:
        self.cache.put(key, image)
        self.metrics.cache_bytes.labels("local").set(self.cache.bytes_held)

    def _shared_cache(self) -> SharedCache | None:
        cache = self.settings.cache
        if cache.redis_url is None:
            return None
        return SharedCache(
            cache.redis_url,
            namespace=cache.redis_namespace,
            ttl=cache.redis_ttl,
            max_value_bytes=cache.redis_max_value_bytes,
            on_event=lambda event: self.metrics.cache.labels("redis", event).inc(),
        )

    # --- the work itself, in a pool thread ---

    def _transform(self, request: Request) -> tuple[CachedImage, dict[str, float]]:
        key = request.key
        assert isinstance(key, RenderKey)
        transform = key.transform
        context = RenderContext(
            limits=self.settings.limits,
            formats=self.settings.formats,
            negotiated=transform.negotiated,
            quality_drop=self.settings.formats.save_data_quality_drop if transform.save_data else 0,
            watermark=self.watermark,
            decoders=self.decoders,
        )
        rendered = render(request.source.read(), transform.options, transform.format, context)
        media_type = rendered.format.media_type
        image = CachedImage(
            rendered.content, media_type, rendered.width, rendered.height, tuple(rendered.notes.items())
        )
        return image, rendered.timings

    def _describe(self, request: Request) -> tuple[CachedImage, dict[str, float]]:
        started = time.perf_counter()
        limits = self.settings.limits
        facts = describe(request.source.read(), limits.max_source_pixels, limits.max_jpeg_scans, self.decoders)
        content = json.dumps(facts, separators=(",", ":")).encode()
        elapsed = (time.perf_counter() - started) * 1000
        return CachedImage(content, "application/json", facts["width"], facts["height"]), {"describe": elapsed}

    def _load_watermark(self) -> Image.Image | None:
        """The watermark image, decoded once at start-up; a bad path stops start-up."""
        path = self.settings.watermark.path
        if path is None:
            return None
        root = self.settings.source.local_root
        file = (root / path).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            raise ValueError(f"IMGPROXY_WATERMARK__PATH: {path} is not a file under the local root")
        with Image.open(file) as mark:
            return to_srgb(mark.convert("RGBA"))

    # --- sources ---

    async def _locate(self, target: Target, url: str | None) -> Located:
        if not target.remote:
            if url is not None:
                raise BadParameter("url", "only GET /img?url=... takes a URL")
            return await self.source.locate(check_key(target.key))
        if self.url_source is None:
            raise Forbidden("remote URLs are disabled on this server")
        if url is None:
            raise BadParameter("url", "an absolute http:// or https:// URL is required")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise BadParameter("url", "is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise BadParameter("url", "must be an absolute http:// or https:// URL")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise BadParameter("url", "the port must be from 1 to 65535")
        return await self.url_source.locate(url)

    def _fetcher(self, patterns: list[str]) -> HttpFetcher:
        src = self.settings.source
        return HttpFetcher(
            client=self.client,
            host_allowed=lambda host, port: host_allowed(host, port, patterns),
            max_bytes=self.settings.limits.max_source_bytes,
            timeout=src.timeout,
            max_redirects=src.max_redirects,
            allow_private=src.allow_private_addresses,
        )

    def _remote(self, scheme: str, fetch: Fetch) -> RemoteSource:
        src = self.settings.source
        return RemoteSource(
            scheme, fetch, src.cache_bytes, (src.cache_min_ttl, src.cache_max_ttl), on_fetch=self._observe_fetch
        )

    def _observe_fetch(self, seconds: float, error: str | None) -> None:
        self.metrics.stage.labels("fetch").observe(seconds)
        if error is not None:
            self.metrics.fetch_errors.labels(error).inc()

    def _primary_source(self) -> Source:
        src = self.settings.source
        if src.origin_url:
            origin = httpx.URL(src.origin_url)
            fetcher = self._fetcher([origin.host, *src.allowed_hosts])
            return _OriginSource(self._remote("origin", fetcher.fetch), src.origin_url)
        if src.s3_bucket:
            from imgproxy.sources.s3 import S3Fetcher  # noqa: PLC0415  (boto3 is an optional extra)

            s3 = S3Fetcher(
                src.s3_bucket, src.s3_endpoint_url, src.s3_region, self.settings.limits.max_source_bytes, src.timeout
            )
            return self._remote(f"s3:{src.s3_bucket}", s3.fetch)
        return LocalSource(src.local_root, self.settings.limits.max_source_bytes)

    def _url_source(self) -> RemoteSource | None:
        patterns = self.settings.source.allowed_hosts
        return self._remote("url", self._fetcher(patterns).fetch) if patterns else None


class _OriginSource:
    """`/img/{path}` → `origin_url` + the percent-encoded path."""

    def __init__(self, remote: RemoteSource, base: str) -> None:
        self.remote = remote
        self.base = base

    async def locate(self, key: str) -> Located:
        return await self.remote.locate(self.base + quote(key, safe="/"))


def _memo_key(target: Target) -> tuple[object, ...]:
    """The request bytes a transform depends on: path, query (signature included), negotiating headers."""
    return (target.raw_path, target.raw_query, target.remote, target.accept, target.save_data, *target.hints.items())


def _widths(value: str, most: int) -> list[int]:
    parts = value.split(",")
    if len(parts) > 32 or not all(p.isascii() and p.isdigit() and 1 <= int(p) <= most for p in parts):
        raise BadParameter("widths", f"must be up to 32 comma-separated widths from 1 to {most}")
    return [int(p) for p in parts]


def _int_param(params: dict[str, str], name: str, low: int, high: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise BadParameter(name, f"must be an integer from {low} to {high}")
    return int(value)


def _split_control(query: Sequence[tuple[str, str]]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    control: dict[str, str] = {}
    items = []
    for name, value in query:
        if name in CONTROL_PARAMS:
            if name in control:
                raise BadParameter(name, "given more than once")
            control[name] = value
        else:
            items.append((name, value))
    return control, items
