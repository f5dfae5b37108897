"""The playground: one static page (no build step, no external requests) and the two small JSON
endpoints it uses. Disabled with IMGPROXY_HTTP__PLAYGROUND=false."""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter, Query
from starlette.responses import HTMLResponse, JSONResponse, Response

from imgproxy.errors import BadParameter, SourceNotFound
from imgproxy.service import ImageService
from imgproxy.signing import sign
from imgproxy.sniff import SNIFF_BYTES, sniff_media_type
from imgproxy.sources.local import LocalSource

PAGE = Path(__file__).parent / "static" / "playground.html"
MAX_LISTED = 200


@functools.cache
def page() -> bytes:
    return PAGE.read_bytes()


def build_playground(service: ImageService) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    settings = service.settings

    @router.get("/")
    async def playground() -> Response:
        return HTMLResponse(page(), headers={"Cache-Control": "no-cache"})

    @router.get("/playground/images")
    async def images() -> Response:
        """Images under the local root (first 200), so the page can offer them; [] for remote sources."""
        source = service.source
        names = _images(source.root) if isinstance(source, LocalSource) else []
        return JSONResponse({"images": names, "signed": bool(settings.security.signing_keys)})

    @router.get("/playground/sign")
    async def sign_for_playground(target: str = Query(max_length=4096)) -> Response:
        """Dev mode only (IMGPROXY_HTTP__DEV_SIGNING): sign a target for the page. Never in production:
        it would sign anything for anyone."""
        keys = settings.security.keys
        if not settings.http.dev_signing or not keys:
            raise SourceNotFound("signing from the playground is off (IMGPROXY_HTTP__DEV_SIGNING)")
        if not target.startswith(("/img/", "/img?", "/meta/", "/srcset/")):
            raise BadParameter("target", "must be an /img, /meta or /srcset request target")
        return JSONResponse({"url": sign(target, keys[0])}, headers={"Cache-Control": "no-store"})

    return router


def _images(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                if sniff_media_type(handle.read(SNIFF_BYTES)):
                    found.append(str(path.relative_to(root)))
        if len(found) >= MAX_LISTED:
            break
    return found
