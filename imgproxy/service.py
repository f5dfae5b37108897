"""The request flow, in order, free of HTTP types:

parse options → negotiate format → locate source → key + ETag → cache → coalesced render in the pool → store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from imgproxy.cache import CachedImage, Coalescer, ResultCache
from imgproxy.limiter import WorkLimiter
from imgproxy.negotiate import negotiate, output_format
from imgproxy.options import Format, Limits, Options, apply_dpr, parse_options
from imgproxy.pipeline.render import Rendered, render
from imgproxy.settings import Settings
from imgproxy.sources.local import LocalSource, SourceFile


@dataclass(frozen=True)
class RenderKey:
    """Everything that determines the output bytes, resolved: this is the cache key and the ETag."""

    source: str
    version: str
    options: Options  # dpr folded in, defaults applied
    format: Format  # explicit, or negotiated bucket (AUTO = legacy: JPEG/PNG by alpha)
    fingerprint: str  # encoder settings

    @property
    def etag(self) -> str:
        return '"' + hashlib.blake2b(repr(self).encode(), digest_size=16).hexdigest() + '"'


@dataclass(frozen=True)
class Request:
    key: RenderKey
    source: SourceFile
    negotiated: bool  # the format came from `Accept`: the response varies on it


@dataclass(frozen=True)
class Result:
    image: CachedImage
    hit: bool
    timings: dict[str, float]


class ImageService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = Limits(settings.limits.max_width, settings.limits.max_height, settings.formats.avif)
        self.source = LocalSource(settings.source.local_root, settings.limits.max_source_bytes)
        self.cache = ResultCache(settings.cache.max_bytes)
        self.renders: Coalescer[tuple[CachedImage, dict[str, float]]] = Coalescer()
        self.limiter = WorkLimiter(settings.limits.workers, settings.limits.queue, settings.limits.render_timeout)
        self._fingerprint = settings.output_fingerprint()

    def prepare(self, path: str, query: Iterable[tuple[str, str]], accept: str | None) -> Request:
        """Everything that is known before a pixel is read: bad input fails here, cheaply."""
        options = apply_dpr(parse_options(query, self.limits), self.limits)
        fmt = output_format(options.format, negotiate(accept, self.settings.formats.avif))
        source = self.source.locate(path)
        key = RenderKey(source.key, source.version, options, fmt, self._fingerprint)
        return Request(key=key, source=source, negotiated=options.format is Format.AUTO)

    async def get(self, request: Request) -> Result:
        cached = self.cache.get(request.key)
        if cached is not None:
            return Result(cached, hit=True, timings={})
        image, timings = await self.renders.run(request.key, lambda: self._render(request))
        return Result(image, hit=False, timings=timings)

    async def _render(self, request: Request) -> tuple[CachedImage, dict[str, float]]:
        key = request.key
        settings = self.settings

        def work() -> Rendered:
            data = self.source.read(request.source)
            return render(data, key.options, key.format, settings.limits, settings.formats)

        rendered, waited = await self.limiter.run(work)
        image = CachedImage(rendered.content, rendered.format.media_type, rendered.width, rendered.height)
        self.cache.put(key, image)  # only reached on success: errors are never cached
        return image, {"queue": waited, **rendered.timings}

    def close(self) -> None:
        self.limiter.shutdown()
