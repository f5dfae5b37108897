"""Soak test: minutes of mixed traffic against a real `imgproxy serve`, with its RSS sampled every second.

    .venv/bin/python bench/soak.py [--duration 300] [--concurrency 8] [--warmup 60] [--max-growth-mib 64]
    .venv/bin/python bench/soak.py --url http://127.0.0.1:8080 --pid 12345   # a server you started

Without --url it starts its own server (`python -m imgproxy serve` on a free 127.0.0.1 port, one process)
over a temporary root of generated images, with a 16 MiB result cache (--cache-mib), 2 render workers and a queue of 16,
and stops it by its PID at the end. The traffic, from --concurrency looping clients, is a mix of:

  hit   (50%)  one of 24 fixed URLs, answered from the result cache after their first render
  miss  (30%)  a URL never asked before (w from 200 to 1199, format and quality rotating): a render, then
               an eviction once the cache is full (it fills within the warm-up)
  bad   (20%)  400 (bad and unknown parameters), 404 (missing file, path escapes), 415 (not an image)

The server's VmRSS is read from /proc every second. Growth is measured after the warm-up (the result
cache fills, allocator arenas settle): the last sample minus the first sample after warm-up, and the peak
minus that first sample. The run fails (exit 1) on any 5xx other than 503, on a wrong status for a bad
request, when the growth after warm-up exceeds --max-growth-mib, or (own server) when the peak RSS exceeds
the result cache plus --overhead-mib. The summary is printed and written to
bench/SOAK.md (or --out). It always stops by itself: --duration seconds of traffic, then shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import httpx
    from PIL import Image
except ImportError as exc:  # run by a Python without the project's dependencies
    sys.exit(f"soak: {exc}; run it with the project's virtualenv: .venv/bin/python bench/soak.py")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HIT_URLS = [
    f"/img/{name}?w={w}&fm={fm}"
    for name in ("photo.jpg", "alpha.png", "anim.gif")
    for w in (160, 320)
    for fm in ("jpeg", "webp", "png", "avif")
]
BAD_REQUESTS = [
    ("/img/photo.jpg?w=0", 400),
    ("/img/photo.jpg?w=99999", 400),
    ("/img/photo.jpg?nope=1", 400),
    ("/img/photo.jpg?w=1&width=2", 400),
    ("/img/missing.jpg?w=100", 404),
    ("/img/%2e%2e/etc/passwd", 404),
    ("/img/broken.jpg?w=100", 415),
    ("/img/page.png?w=100", 415),
]
FORMATS = ("jpeg", "webp", "png")


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    latencies: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    wrong: list[str] = field(default_factory=list)  # bad requests answered with another status
    errors: list[str] = field(default_factory=list)  # transport errors
    rss: list[tuple[float, float]] = field(default_factory=list)  # (second, MiB), every second
    cache: list[tuple[float, float]] = field(default_factory=list)  # (second, MiB held by the result cache)


CORPUS_PHOTO = ROOT.parent / "shared" / "corpus" / "medium.jpg"


# What one process holds besides its result cache: the interpreter and libraries (~75 MiB: FastAPI,
# Pillow, numpy, prometheus), each render thread's working images and encoder state (AVIF's the largest),
# and what glibc's allocator keeps between renders.
OVERHEAD_MIB = 192.0


def make_root(root: Path) -> None:
    """A real photo when the shared corpus is there (1600x1200 JPEG), else a noisy 1200x800 stand-in;
    either way outputs have realistic sizes, so the result cache fills and evicts."""
    if CORPUS_PHOTO.is_file():
        (root / "photo.jpg").write_bytes(CORPUS_PHOTO.read_bytes())
    else:
        noise = Image.effect_noise((1200, 800), 48).convert("RGB")
        photo = Image.blend(Image.linear_gradient("L").resize((1200, 800)).convert("RGB"), noise, 0.5)
        photo.save(root / "photo.jpg", quality=90)
    Image.new("RGBA", (400, 300), (20, 120, 220, 128)).save(root / "alpha.png")
    frames = [Image.new("P", (120, 90), i * 40) for i in range(4)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=80, loop=0)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (root / "page.png").write_bytes(b"<!doctype html><script>alert(1)</script>")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.contextmanager
def own_server(root: Path, cache_mib: int) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")},
        "IMGPROXY_SOURCE__LOCAL_ROOT": str(root),
        "IMGPROXY_CACHE__MAX_BYTES": str(cache_mib * 1024 * 1024),
        "IMGPROXY_LIMITS__WORKERS": "2",
        "IMGPROXY_LIMITS__MAX_QUEUE": "16",
        "IMGPROXY_LOG__LEVEL": "warning",
        "IMGPROXY_HTTP__PLAYGROUND": "false",
    }
    command = [sys.executable, "-m", "imgproxy", "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited: {server.stderr.read().decode() if server.stderr else ''}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 30 s")
            time.sleep(0.1)
        yield base, server.pid
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            match = re.search(r"VmRSS:\s+(\d+)", status.read())
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


_CACHE_BYTES = re.compile(r'^imgproxy_cache_bytes\{tier="local"\}\s+([0-9.e+]+)', re.M)


async def cache_mib(client: httpx.AsyncClient) -> float | None:
    """The result cache's bytes held, from the server's own /metrics."""
    try:
        match = _CACHE_BYTES.search((await client.get("/metrics")).text)
    except httpx.HTTPError:
        return None
    return float(match.group(1)) / 1024 / 1024 if match else None


async def sample(
    client: httpx.AsyncClient,
    *,
    pid: int | None,
    until: float,
    started: float,
    samples: list[tuple[float, float]],
    cache: list[tuple[float, float]],
) -> None:
    """RSS every second, the result cache's size every ten."""
    tick = 0
    while time.monotonic() < until:
        value = rss_mib(pid) if pid is not None else None
        if value is not None:
            samples.append((time.monotonic() - started, value))
        if tick % 10 == 0:
            held = await cache_mib(client)
            if held is not None:
                cache.append((time.monotonic() - started, held))
        tick += 1
        await asyncio.sleep(1.0)


class Traffic:
    """Picks the next request: a deterministic rotation, so two runs send the same mix. Misses are sized
    200..1199 px wide, the format rotating with every miss and the quality every 3,000, so each one is a
    new cache key (180,000 before any repeats) and the result cache is full within the warm-up: growth is
    then measured at steady state, with an eviction on every store."""

    def __init__(self) -> None:
        self.count = 0
        self.misses = 0

    def next(self) -> tuple[str, str, int | None]:
        self.count += 1
        slot = self.count % 10
        if slot < 5:
            return "hit", HIT_URLS[self.count % len(HIT_URLS)], 200
        if slot < 8:
            n = self.misses
            self.misses += 1
            width = 200 + (n * 37) % 1000  # with the format, distinct for 3,000 misses (3 and 1000 are coprime)
            fm = FORMATS[n % len(FORMATS)]  # every encoder from the start: warm-up sees them all
            quality = 30 + (n // 3000) % 60
            return "miss", f"/img/photo.jpg?w={width}&fm={fm}&q={quality}", 200
        target, status = BAD_REQUESTS[self.count % len(BAD_REQUESTS)]
        return "bad", target, status


async def client_loop(client: httpx.AsyncClient, traffic: Traffic, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        kind, target, expected = traffic.next()
        started = time.perf_counter()
        try:
            response = await client.get(target)
        except httpx.HTTPError as exc:
            tally.errors.append(f"{target}: {type(exc).__name__}")
            continue
        tally.latencies[(kind, response.status_code)].append(time.perf_counter() - started)
        tally.statuses[(kind, response.status_code)] += 1
        if kind == "bad" and response.status_code != expected:
            tally.wrong.append(f"{target}: {response.status_code} (expected {expected})")
        if kind != "bad" and response.status_code == 200 and tally.statuses[(kind, 200)] % 97 == 1:
            Image.open(io.BytesIO(response.content)).load()  # now and then: the body is a real image


async def soak(base: str, pid: int | None, duration: float, concurrency: int) -> tuple[Tally, float]:
    tally = Tally()
    started = time.monotonic()
    until = started + duration
    traffic = Traffic()
    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        await asyncio.gather(
            sample(client, pid=pid, until=until, started=started, samples=tally.rss, cache=tally.cache),
            *(client_loop(client, traffic, until, tally) for _ in range(concurrency)),
        )
    return tally, time.monotonic() - started


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summarise(tally: Tally, elapsed: float, warmup: float, args: argparse.Namespace) -> tuple[str, bool]:
    samples = tally.rss
    total = sum(tally.statuses.values())
    server_errors = sum(count for (_, status), count in tally.statuses.items() if status >= 500 and status != 503)
    after = [rss for at, rss in samples if at >= warmup]
    baseline = after[0] if after else None
    end_growth = after[-1] - baseline if after and baseline is not None else None
    peak_growth = max(after) - baseline if after and baseline is not None else None
    growth_ok = end_growth is None or (end_growth <= args.max_growth_mib and (peak_growth or 0) <= args.max_growth_mib)
    bound = None if args.url else args.cache_mib + args.overhead_mib  # a server we did not start: unknown budget
    peak = max((rss for _, rss in samples), default=None)
    bound_ok = bound is None or peak is None or peak <= bound
    distinct = tally.statuses[("miss", 200)]
    ok = server_errors == 0 and not tally.wrong and not tally.errors and growth_ok and bound_ok
    lines = [
        "# Soak results",
        "",
        f"Finished {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}) with `bench/soak.py --duration "
        f"{args.duration:g} --concurrency {args.concurrency} --warmup {warmup:g}`"
        + (
            f" against {args.url}."
            if args.url
            else f": own server, {args.cache_mib} MiB result cache, 2 workers, queue 16."
        ),
        "",
        f"**{'PASS' if ok else 'FAIL'}**: {total} requests in {elapsed:.0f} s ({total / max(elapsed, 1e-9):.0f}/s), "
        f"{server_errors} server errors, {len(tally.wrong)} wrong statuses, {len(tally.errors)} transport errors; "
        + (
            f"RSS growth after warm-up {end_growth:+.1f} MiB at the end, {peak_growth:+.1f} MiB at the peak "
            f"(bound {args.max_growth_mib:g} MiB)."
            if end_growth is not None and peak_growth is not None
            else "RSS not sampled (no --pid)."
        ),
        "",
        f"{distinct} distinct cold renders (each miss is a URL never asked before)"
        + (
            f"; peak RSS {peak:.1f} MiB against a bound of {bound:g} MiB "
            f"({args.cache_mib} MiB result cache + {args.overhead_mib:g} MiB fixed overhead)."
            if bound is not None and peak is not None
            else "."
        ),
        "",
        "| kind | status | requests | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (kind, status), count in sorted(tally.statuses.items()):
        times = tally.latencies[(kind, status)]
        lines.append(
            f"| {kind} | {status} | {count} | {percentile(times, 0.5) * 1000:.1f} | "
            f"{percentile(times, 0.95) * 1000:.1f} | {percentile(times, 0.99) * 1000:.1f} |"
        )
    if samples:
        rss = [value for _, value in samples]
        lines += [
            "",
            f"RSS (MiB): start {rss[0]:.1f}, after warm-up {baseline if baseline is not None else float('nan'):.1f}, "
            f"peak {max(rss):.1f}, end {rss[-1]:.1f}; median after warm-up {statistics.median(after or rss):.1f}.",
            "",
            "| second | RSS MiB | result cache MiB |",
            "|---:|---:|---:|",
        ]
        step = max(1, len(samples) // 20)
        shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
        for at, value in shown:
            held = [mib for when, mib in tally.cache if when <= at + 0.5]
            lines.append(f"| {at:.0f} | {value:.1f} | {held[-1] if held else float('nan'):.1f} |")
    for title, items in (("Wrong statuses", tally.wrong), ("Transport errors", tally.errors)):
        if items:
            lines += ["", f"{title} (first 20):", "", *[f"- {item}" for item in items[:20]]]
    return "\n".join(lines) + "\n", ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of traffic (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="looping clients (default 8)")
    parser.add_argument("--warmup", type=float, help="seconds before growth is measured (default duration/5)")
    parser.add_argument("--url", help="base URL of a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="its PID, to sample RSS (with --url)")
    parser.add_argument("--cache-mib", type=int, default=16, help="result cache of the own server (default 16)")
    parser.add_argument("--max-growth-mib", type=float, default=64, help="RSS growth bound after warm-up")
    parser.add_argument(
        "--overhead-mib",
        type=float,
        default=OVERHEAD_MIB,
        help=f"own server: peak RSS bound = result cache + this (default {OVERHEAD_MIB:g})",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "SOAK.md", help="summary file (default bench/SOAK.md)")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else args.duration / 5
    with contextlib.ExitStack() as stack:
        if args.url:
            base, pid = args.url.rstrip("/"), args.pid
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            make_root(root)
            base, pid = stack.enter_context(own_server(root, args.cache_mib))
        tally, elapsed = asyncio.run(soak(base, pid, args.duration, args.concurrency))
        try:
            healthy = httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        except httpx.HTTPError:
            healthy = False
        if not healthy:
            tally.errors.append("/healthz did not answer 200 after the soak")
    report, ok = summarise(tally, elapsed, warmup, args)
    print(report)
    args.out.write_text(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
