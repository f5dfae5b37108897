"""The naive baseline of `bench/run.py`: a tutorial-style FastAPI + Pillow resizer.

GET /img/{file}?w=300&fm=webp&q=80 -> the image at width `w` (aspect ratio kept), encoded as `fm`.

Deliberately what a first version looks like: a sync `def` endpoint (so FastAPI runs it in its thread
pool), `Image.open` -> `convert("RGB")` (a full-size decode: no `draft`, so no DCT scaling) -> one LANCZOS
`resize` to the exact size -> `save` with the quality -> a `Response` holding the bytes. No cache, no
limits, no EXIF orientation, no negotiation. Encoder settings are Pillow's defaults (WebP method 4),
the same the project uses for WebP.

Root directory: env `NAIVE_ROOT`. Run (the benchmark does this itself):
    .venv/bin/uvicorn naive_baseline:app --app-dir bench --host 127.0.0.1 --port 8082 --log-level warning
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from fastapi import FastAPI, HTTPException, Response
from PIL import Image

ROOT = Path(os.environ.get("NAIVE_ROOT", ".")).resolve()
FORMATS = {"webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png")}

app = FastAPI()


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/img/{file:path}")
def img(file: str, w: int = 300, fm: str = "webp", q: int = 80) -> Response:
    path = (ROOT / file).resolve()
    if not path.is_relative_to(ROOT) or not path.is_file():
        raise HTTPException(404, "no such image")
    if fm not in FORMATS or not 1 <= w <= 8192 or not 1 <= q <= 100:
        raise HTTPException(400, "bad parameter")
    pillow_format, media_type = FORMATS[fm]
    with Image.open(path) as source:
        image = source.convert("RGB")  # decodes all 12 MP
    height = max(1, round(image.height * w / image.width))
    image = image.resize((w, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, quality=q)
    return Response(content=buffer.getvalue(), media_type=media_type)
