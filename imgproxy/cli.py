"""`imgproxy serve | sign | srcset | render`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from imgproxy import prerender
from imgproxy.errors import ImageProxyError
from imgproxy.metrics import MULTIPROC_ENV
from imgproxy.options import Format, Limits, expand_preset, parse_options
from imgproxy.pipeline.render import RenderContext
from imgproxy.service import ImageService, Target
from imgproxy.settings import Settings, UnknownSettingError, available_cpus, load_settings
from imgproxy.signing import sign


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgproxy", description="On-the-fly image transformation service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve images over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1, help="processes (each with its own cache and pool)")
    signer = commands.add_parser("sign", help="print a signed URL, e.g. imgproxy sign '/img/cat.jpg?w=300'")
    signer.add_argument("target", help="request target: path and query, e.g. /img/cat.jpg?w=300")
    signer.add_argument("--expires-in", type=int, metavar="SECONDS", help="add expires=now+SECONDS (signed)")
    signer.add_argument("--base", default="", help="prefix, e.g. https://img.example.com")
    srcset = commands.add_parser("srcset", help="print the /srcset answer (JSON) for an image under the source root")
    srcset.add_argument("path", help="image path under the source, e.g. cats/tom.jpg")
    srcset.add_argument("--widths", help="fluid candidate widths, e.g. 320,640,1280 (default: settings)")
    srcset.add_argument("--width", type=int, help="fixed CSS width: 1x/2x/3x candidates instead")
    srcset.add_argument("--sizes", help="the sizes attribute, e.g. '(max-width: 600px) 100vw, 600px'")
    srcset.add_argument("--options", default="", help="image options for every candidate, e.g. 'fm=webp&q=70'")
    prerender = commands.add_parser("render", help="pre-render a folder's variants to disk (resumable)")
    prerender.add_argument("source", type=Path, help="folder of originals")
    prerender.add_argument("out", type=Path, help="output folder")
    prerender.add_argument("--preset", help="a preset from IMGPROXY_PRESETS for every variant")
    prerender.add_argument("--options", default="", help="options for every variant, e.g. 'fit=cover&h=400'")
    prerender.add_argument("--widths", default="320,640,1280", help="widths to render (default 320,640,1280)")
    prerender.add_argument("--format", default="webp", choices=["jpeg", "png", "webp", "avif", "gif"])
    prerender.add_argument("--workers", type=int, default=available_cpus())
    prerender.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    try:
        settings = load_settings()  # fail here, with one clear line, rather than inside every worker process
    except (UnknownSettingError, ValidationError, SettingsError) as exc:
        print(f"imgproxy: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "sign":
        return _sign(settings, args.target, args.expires_in, args.base)
    if args.command == "srcset":
        return _srcset(settings, args)
    if args.command == "render":
        return _render(settings, args)
    return _serve(args.host, args.port, args.workers)


def _srcset(settings: Settings, args: argparse.Namespace) -> int:
    query = parse_qsl(args.options, keep_blank_values=True)
    query += [(name, str(value)) for name, value in (("widths", args.widths), ("w", args.width), ("sizes", args.sizes))]
    query = [(name, value) for name, value in query if value not in ("None", "")]
    target = "/srcset/" + quote(args.path) + ("?" + urlencode(query) if query else "")
    if settings.security.signing_keys:  # the operator's own tool: sign the request it makes
        target = sign(target, settings.security.keys[0])
    path, _, raw_query = target.partition("?")
    request = Target(
        key=args.path,
        remote=False,
        query=parse_qsl(raw_query, keep_blank_values=True),
        raw_path=path.encode(),
        raw_query=raw_query.encode(),
        accept=None,
    )

    async def answer() -> dict[str, object]:
        service = ImageService(settings)
        try:
            return await service.srcset(request)
        finally:
            await service.aclose()

    try:
        print(json.dumps(asyncio.run(answer()), indent=2))
    except ImageProxyError as exc:
        print(f"imgproxy: {exc.detail}", file=sys.stderr)
        return 1
    return 0


def _render(settings: Settings, args: argparse.Namespace) -> int:
    limits = Limits(settings.limits.max_width, settings.limits.max_height, settings.formats.avif)
    own = [item for item in parse_qsl(args.options, keep_blank_values=True) if item[0] not in ("w", "width", "fm")]

    def variant(width: int) -> list[tuple[str, str]]:
        """The preset, under the given options, under this variant's width and format (which always win)."""
        items = [*own, ("w", str(width)), ("fm", args.format)]
        return expand_preset(items, args.preset, settings.presets, presets_only=False)

    try:
        widths = [int(width) for width in args.widths.split(",")]
        parse_options(variant(widths[0]), limits)
        jobs = prerender.plan_jobs(args.source, args.out, variant, widths, Format(args.format))
    except (ValueError, ImageProxyError) as exc:
        print(f"imgproxy: bad options: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return 2
    context = RenderContext(limits=settings.limits, formats=settings.formats)
    summary = prerender.run(jobs, context, limits, args.workers, progress=not args.quiet)
    for failure in summary.failed:
        print(f"failed: {failure}", file=sys.stderr)
    print(summary.text())
    return 1 if summary.failed else 0


def _sign(settings: Settings, target: str, expires_in: int | None, base: str) -> int:
    if not settings.security.signing_keys:
        print("imgproxy: no signing key: set IMGPROXY_SECURITY__SIGNING_KEYS", file=sys.stderr)
        return 2
    if not target.startswith("/"):
        print("imgproxy: the target must start with /, e.g. /img/cat.jpg?w=300", file=sys.stderr)
        return 2
    expires = int(time.time()) + expires_in if expires_in is not None else None
    print(base.rstrip("/") + sign(target, settings.security.keys[0], expires))
    return 0


def _serve(host: str, port: int, workers: int) -> int:
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Each worker process writes its metrics here; /metrics merges them, whichever worker answers.
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="imgproxy-metrics-")
    uvicorn.run(
        "imgproxy.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        server_header=False,
    )
    return 0
