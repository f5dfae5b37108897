"""`imgproxy serve | sign`: the command line."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from imgproxy.metrics import MULTIPROC_ENV
from imgproxy.settings import Settings, UnknownSettingError, load_settings
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
    args = parser.parse_args(argv)

    try:
        settings = load_settings()  # fail here, with one clear line, rather than inside every worker process
    except (UnknownSettingError, ValidationError, SettingsError) as exc:
        print(f"imgproxy: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "sign":
        return _sign(settings, args.target, args.expires_in, args.base)
    return _serve(args.host, args.port, args.workers)


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
