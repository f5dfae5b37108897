"""`imgproxy render DIR OUT`: pre-render a folder's variants to disk, for static hosting.

The same pipeline as the server, run over every image under DIR for each width. Resumable: a variant
whose file exists and is newer than its source is skipped, and files are written whole (temp file,
then rename), so an interrupted run leaves no half image behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from imgproxy.errors import ImageProxyError
from imgproxy.options import Format, Limits, apply_dpr, parse_options
from imgproxy.pipeline.render import RenderContext, render
from imgproxy.sniff import SNIFF_BYTES, sniff_media_type

EXTENSIONS = {Format.JPEG: "jpg", Format.PNG: "png", Format.WEBP: "webp", Format.AVIF: "avif", Format.GIF: "gif"}


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    query: tuple[tuple[str, str], ...]


@dataclass
class Summary:
    rendered: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    source_bytes: int = 0
    output_bytes: int = 0

    def text(self) -> str:
        saved = 1 - self.output_bytes / self.source_bytes if self.source_bytes else 0.0
        return (
            f"{self.rendered} rendered, {self.skipped} already there, {len(self.failed)} failed; "
            f"{self.source_bytes:,} bytes of sources -> {self.output_bytes:,} bytes of all variants "
            f"({saved:.0%} saved)"
        )


def images_under(root: Path, skip: Path) -> Iterator[Path]:
    """Images under `root`, except under `skip` (an output folder inside the source: no variants of variants)."""
    skip = skip.resolve()
    for path in sorted(root.rglob("*")):
        if path.resolve().is_relative_to(skip):
            continue
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                if sniff_media_type(handle.read(SNIFF_BYTES)):
                    yield path


def plan_jobs(
    root: Path, out: Path, variant: Callable[[int], Sequence[tuple[str, str]]], widths: Sequence[int], fmt: Format
) -> list[Job]:
    """One job per image and width; `variant(width)` gives that width's options."""
    jobs = []
    for source in images_under(root, skip=out):
        relative = source.relative_to(root)
        for width in widths:
            name = f"{relative.stem}-{width}w.{EXTENSIONS[fmt]}"
            jobs.append(Job(source, out / relative.parent / name, tuple(variant(width))))
    return jobs


def run(jobs: Sequence[Job], context: RenderContext, limits: Limits, workers: int, progress: bool) -> Summary:
    summary = Summary()
    sources: set[Path] = set()
    pending = []
    for job in jobs:
        if job.target.exists() and job.target.stat().st_mtime >= job.source.stat().st_mtime:
            summary.skipped += 1
            summary.output_bytes += job.target.stat().st_size
        else:
            pending.append(job)
        sources.add(job.source)
    summary.source_bytes = sum(path.stat().st_size for path in sources)
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(pending), disable=not progress) as bar:
        futures = {pool.submit(_render_one, job, context, limits): job for job in pending}
        for future in as_completed(futures):
            job = futures[future]
            try:
                summary.output_bytes += future.result()
                summary.rendered += 1
            except ImageProxyError as exc:
                summary.failed.append(f"{job.source}: {exc.detail}")
            except OSError as exc:  # a full disk or an unwritable folder fails this variant, not the run
                summary.failed.append(f"{job.target}: {exc.strerror or exc}")
            bar.update(1)
    return summary


def _render_one(job: Job, context: RenderContext, limits: Limits) -> int:
    options = apply_dpr(parse_options(job.query, limits), limits)
    fmt = options.format
    rendered = render(job.source.read_bytes(), options, fmt, context)
    job.target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=job.target.parent, prefix=".partial-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(rendered.content)
        os.replace(temporary, job.target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)  # never leave half a file behind
        raise
    return len(rendered.content)
