"""`imgproxy serve`: the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from imgproxy.settings import UnknownSettingError, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgproxy", description="On-the-fly image transformation service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve images over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1, help="processes (each with its own cache and pool)")
    args = parser.parse_args(argv)

    try:
        load_settings()  # fail here, with one clear line, rather than inside every worker process
    except (UnknownSettingError, ValidationError) as exc:
        print(f"imgproxy: invalid configuration: {exc}", file=sys.stderr)
        return 2

    uvicorn.run(
        "imgproxy.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        server_header=False,
    )
    return 0
