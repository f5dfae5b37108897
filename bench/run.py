"""Throughput benchmark: the project against a naive FastAPI + Pillow baseline, with wrk over loopback.

    .venv/bin/python bench/run.py [--duration 20] [--warmup 3] [--concurrency 8] [--rounds 3] [--workers 1]

For every round, workload and server it starts a fresh server on a free 127.0.0.1 port, checks that a
response decodes as a 300 px wide WebP, runs an unmeasured warm-up, waits for the server to go idle, then
runs wrk for the measured window while reading the server's process tree from /proc (CPU time, VmHWM).
Servers alternate within each round (round 1: naive, project; round 2: project, naive; ...).

Workloads (source: ../shared/corpus/big.jpg, 4032x3024 JPEG, to width 300, WebP q80):
  cold-webp  every request a URL the server has never seen: the width steps through 268..331 and the file
             name (a hard-link alias in a temporary docroot) changes every 64 requests.
  hot-webp   one URL repeated; the project answers it from its result cache.

The medians over rounds go to bench/BASELINE.md (and stdout) with the two targets of the issue:
project cold >= 3x naive cold, and project hot >= 20x project cold.
Servers are stopped by their own PIDs in `finally`; nothing is left running.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    from PIL import Image, features
except ImportError as exc:  # run by a Python without the project's dependencies
    sys.exit(f"bench: {exc}; run it with the project's virtualenv: .venv/bin/python bench/run.py")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "corpus" / "big.jpg"
LUA_SCRIPT = BENCH / "urls.lua"

TARGET_WIDTH = 300
BAND = 64  # cold widths: TARGET_WIDTH - 32 .. TARGET_WIDTH + 31; the file alias changes every BAND requests
MAX_COLD_RPS = 500  # sizes the cold URL lists (far above any cold rate here); running out is reported
QUERY = "fm=webp&q=80"
SERVERS = ("naive", "project")
WORKLOADS = ("cold-webp", "hot-webp")
COLD_RATIO_TARGET = 3.0  # project cold / naive cold
HOT_RATIO_TARGET = 20.0  # project hot / project cold
DISTURBED_PCT = 10.0  # "other CPU" above this means something else was busy during the window
HZ = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state, 1 = ppid, 2 = pgrp, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (uvicorn --workers N spawns one process per worker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            tree.append(child)
            todo.append(child)
    return tree


def cpu_ticks(pids: Sequence[int]) -> dict[int, int]:
    """utime + stime of each process, in clock ticks."""
    ticks = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def peak_rss_kb(pids: Sequence[int]) -> int:
    """VmHWM (peak resident set) summed over the processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


def machine_busy_ticks() -> int:
    """Ticks all CPUs spent on anything but idle and iowait since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(values) - values[3] - values[4]


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def own_cpu_s() -> tuple[float, float]:
    """(CPU seconds of this script, CPU seconds of its reaped children, i.e. the wrk runs)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 60.0) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str]
    cwd: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> float:
        """Start the server in its own session and wait until /healthz answers 200; seconds taken."""
        with self.log.open("ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} {shlex.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if http_get(self.base_url + "/healthz", timeout=5)[0] == 200:
                    return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout:g} s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc is not None else []

    def stop(self) -> None:
        """SIGTERM the started PID, then its descendants as listed before; SIGKILL whatever is left,
        including any process still in the session's process group (pgid = the started PID)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        pids = process_tree(proc.pid)
        _signal(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        for pid in pids[1:]:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        group = [
            int(e)
            for e in os.listdir("/proc")
            if e.isdigit() and (_stat_fields(int(e)) or ["", "", ""])[2] == str(proc.pid)
        ]
        for pid in {*pids, *group}:
            if alive(pid):
                _signal(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def server_env(docroot: Path, extra: Sequence[str]) -> dict[str, str]:
    """The inherited environment without any IMGPROXY_* variable, plus the docroot and `--set` values."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("IMGPROXY_")}
    env["IMGPROXY_SOURCE__LOCAL_ROOT"] = str(docroot)
    env["NAIVE_ROOT"] = str(docroot)
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def server_argv(name: str, port: int, args: argparse.Namespace) -> list[str]:
    common = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
    quiet = ["--log-level", "warning", "--no-access-log", "--no-server-header"]
    if name == "naive":
        return [sys.executable, "-m", "uvicorn", "naive_baseline:app", "--app-dir", str(BENCH), *common, *quiet]
    if args.launcher == "cli":  # `imgproxy serve` itself: uvicorn at log level info, access log on
        return [str(Path(sys.executable).parent / "imgproxy"), "serve", *common]
    return [sys.executable, "-m", "uvicorn", "--factory", "imgproxy.app:create_app", *common, *quiet]


# --------------------------------------------------------------------------- workloads


def cold_paths(docroot: Path, source: Path, tag: str, count: int) -> list[str]:
    """`count` distinct URL paths: width TARGET_WIDTH-32..+31, a new hard-link alias every BAND requests."""
    paths = []
    for i in range(count):
        alias = f"{source.stem}-{tag}-{i // BAND:04d}{source.suffix}"
        if i % BAND == 0:
            os.link(docroot / source.name, docroot / alias)
        paths.append(f"/img/{alias}?w={TARGET_WIDTH - BAND // 2 + i % BAND}&{QUERY}")
    return paths


def hot_path(source: Path) -> str:
    return f"/img/{source.name}?w={TARGET_WIDTH}&{QUERY}"


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # HTTP status >= 400 (wrk's "non-2xx or 3xx") + connect/read/write errors + timeouts
    repeats: int  # requests that reused a URL of a cold list (must be 0)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(base_url: str, paths_file: Path, seconds: int, args: argparse.Namespace) -> LoadResult:
    threads = min(args.wrk_threads, args.concurrency)
    argv = ["wrk", f"-t{threads}", f"-c{args.concurrency}", f"-d{seconds}s", "--timeout", "60s"]
    argv += ["-s", str(LUA_SCRIPT), base_url, "--", str(paths_file), str(threads)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 180, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"bench"')]
    if not lines:
        raise RuntimeError(f"wrk printed no summary (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(lines[-1])
    errors = sum(data[k] for k in ("err_status", "err_connect", "err_read", "err_write", "err_timeout"))
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_ms"],
        p99_ms=data["p99_ms"],
        errors=errors,
        repeats=data["repeats"],
    )


def wait_idle(server: Server, timeout: float = 60.0) -> float:
    """Wait until the server's processes stop using CPU: the warm-up's last requests are still being
    rendered after wrk disconnects, and must not overlap the measured window."""
    started = time.monotonic()
    last, quiet = sum(cpu_ticks(server.pids()).values()), 0
    while time.monotonic() - started < timeout and quiet < 2:
        time.sleep(0.2)
        now = sum(cpu_ticks(server.pids()).values())
        quiet = quiet + 1 if now - last <= 1 else 0
        last = now
    return time.monotonic() - started


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Smoke:
    server: str
    status: int
    content_type: str
    format: str
    size: tuple[int, int]
    bytes: int


@dataclass(frozen=True)
class Record:
    round: int
    workload: str
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    repeats: int
    rss_peak_mb: float
    cpu_ms_per_req: float
    other_cpu_pct: float
    processes: int
    startup_s: float


def smoke_check(server: Server, path: str) -> Smoke:
    status, content_type, body = http_get(server.base_url + path)
    fmt, size = "?", (0, 0)
    with contextlib.suppress(Exception), Image.open(io.BytesIO(body)) as image:
        fmt, size = image.format or "?", image.size
    smoke = Smoke(server.name, status, content_type, fmt, size, len(body))
    if status != 200 or not content_type.startswith("image/webp") or fmt != "WEBP" or size[0] != TARGET_WIDTH:
        detail = body[:300].decode(errors="replace") if fmt == "?" else ""
        raise RuntimeError(f"smoke check failed: {status} {content_type} {fmt} {size[0]}x{size[1]} {detail}".strip())
    return smoke


@dataclass(frozen=True)
class Failure:
    round: int
    workload: str
    server: str
    error: str


@dataclass
class Context:
    args: argparse.Namespace
    tmp: Path
    docroot: Path
    source: Path
    env: dict[str, str]
    smokes: dict[str, Smoke] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def paths_for(ctx: Context, workload: str, server: str, rnd: int) -> tuple[Path, Path]:
    """(warm-up paths file, measured paths file) for one run; cold lists are new aliases each time."""
    if workload == "hot-webp":
        hot = write_lines(ctx.tmp / "hot.txt", [hot_path(ctx.source)])
        return hot, hot
    files = []
    for phase, seconds in (("w", ctx.args.warmup), ("m", ctx.args.duration)):
        count = max(BAND, math.ceil(seconds * MAX_COLD_RPS / BAND) * BAND)
        tag = f"r{rnd}{server[0]}{phase}"
        files.append(write_lines(ctx.tmp / f"{tag}.txt", cold_paths(ctx.docroot, ctx.source, tag, count)))
    return files[0], files[1]


def measure(ctx: Context, workload: str, name: str, rnd: int) -> Record:
    args = ctx.args
    warm_file, measured_file = paths_for(ctx, workload, name, rnd)
    port = free_port()
    server = Server(name, server_argv(name, port, args), port, ctx.env, ctx.tmp, ctx.tmp / f"{name}.log")
    try:
        startup = server.start()
        if args.workers > 1:
            time.sleep(1.0)  # let every worker process come up before the load starts
        smoke = smoke_check(server, hot_path(ctx.source))
        ctx.smokes.setdefault(name, smoke)
        if args.warmup:
            run_wrk(server.base_url, warm_file, args.warmup, args)
        wait_idle(server)
        pids = server.pids()
        ticks0, busy0, (me0, kids0), t0 = cpu_ticks(pids), machine_busy_ticks(), own_cpu_s(), time.monotonic()
        load = run_wrk(server.base_url, measured_file, args.duration, args)
        pids = server.pids()
        ticks1, busy1, (me1, kids1), t1 = cpu_ticks(pids), machine_busy_ticks(), own_cpu_s(), time.monotonic()
        rss_kb = peak_rss_kb(pids)
    finally:
        server.stop()
    server_s = sum(ticks1[p] - ticks0.get(p, 0) for p in ticks1) / HZ
    other_s = (busy1 - busy0) / HZ - server_s - (kids1 - kids0) - (me1 - me0)
    return Record(
        round=rnd,
        workload=workload,
        server=name,
        rps=load.rps,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        requests=load.requests,
        errors=load.errors,
        repeats=load.repeats,
        rss_peak_mb=rss_kb / 1024,
        cpu_ms_per_req=1000 * server_s / max(load.requests, 1),
        other_cpu_pct=max(0.0, 100 * other_s / ((t1 - t0) * (os.cpu_count() or 1))),
        processes=len(pids),
        startup_s=startup,
    )


# --------------------------------------------------------------------------- report


def median(records: Sequence[Record], attr: str) -> float | None:
    values = [float(getattr(r, attr)) for r in records]
    return statistics.median(values) if values else None


def cell(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def select(records: Sequence[Record], workload: str, server: str) -> list[Record]:
    return [r for r in records if r.workload == workload and r.server == server]


Pair = tuple[tuple[str, str], tuple[str, str]]  # (numerator (workload, server), denominator)
TARGETS: tuple[tuple[str, Pair, float], ...] = (
    (
        "cold throughput: project / naive baseline",
        (("cold-webp", "project"), ("cold-webp", "naive")),
        COLD_RATIO_TARGET,
    ),
    (
        "hot vs cold throughput: project hot / project cold",
        (("hot-webp", "project"), ("cold-webp", "project")),
        HOT_RATIO_TARGET,
    ),
)


def ratio_of_medians(records: Sequence[Record], pair: Pair, attr: str = "rps") -> float | None:
    num, den = (median(select(records, *side), attr) for side in pair)
    return num / den if num is not None and den else None


def per_round_ratios(records: Sequence[Record], pair: Pair, attr: str = "rps") -> list[float]:
    """The ratio within each round, whose two runs were measured minutes apart, not a whole run apart."""
    ratios = []
    for rnd in sorted({r.round for r in records}):
        same = [r for r in records if r.round == rnd]
        num, den = (median(select(same, *side), attr) for side in pair)
        if num is not None and den:
            ratios.append(num / den)
    return ratios


def results_table(records: Sequence[Record]) -> list[str]:
    lines = [
        "| workload | server | req/s | p50 ms | p99 ms | errors | peak RSS MB | CPU ms/req | other CPU % "
        "| disturbed rounds | req/s per round |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for workload in WORKLOADS:
        for name in SERVERS:
            rs = select(records, workload, name)
            if not rs:
                continue
            per_round = ", ".join(f"{r.rps:.1f}" for r in sorted(rs, key=lambda r: r.round))
            errors = sum(r.errors for r in rs)
            repeats = sum(r.repeats for r in rs)
            disturbed = sum(r.other_cpu_pct > DISTURBED_PCT for r in rs)
            lines.append(
                f"| {workload} | {name} | {cell(median(rs, 'rps'))} | {cell(median(rs, 'p50_ms'))} "
                f"| {cell(median(rs, 'p99_ms'))} | {errors}{f' (URL repeats: {repeats})' if repeats else ''} "
                f"| {cell(median(rs, 'rss_peak_mb'), 0)} | {cell(median(rs, 'cpu_ms_per_req'), 2)} "
                f"| {cell(median(rs, 'other_cpu_pct'), 0)} | {disturbed} of {len(rs)} | {per_round} |"
            )
    return lines


def targets_table(records: Sequence[Record]) -> list[str]:
    """The verdict is on the ratio of the medians; the per-round ratios show how much the machine's noise moved it."""
    lines = ["| target | measured | required | verdict | ratio per round |", "|---|---:|---:|---|---|"]
    for label, pair, target in TARGETS:
        ratio = ratio_of_medians(records, pair)
        verdict = "n/a" if ratio is None else ("PASS" if ratio >= target else "FAIL")
        rounds = ", ".join(f"{v:.1f}x" for v in per_round_ratios(records, pair))
        lines.append(f"| {label} | {cell(ratio)}x | >= {target:g}x | {verdict} | {rounds} |")
    # CPU per request hardly depends on what else shares the cores: the same comparisons, as efficiency.
    for label, pair, _ in TARGETS:
        inverse = (pair[1], pair[0])  # less CPU per request is better
        ratio = ratio_of_medians(records, inverse, "cpu_ms_per_req")
        rounds = ", ".join(f"{v:.1f}x" for v in per_round_ratios(records, inverse, "cpu_ms_per_req"))
        lines.append(f"| (information) {label}, in CPU ms/req (inverse) | {cell(ratio)}x | - | - | {rounds} |")
    return lines


def rounds_table(records: Sequence[Record]) -> list[str]:
    lines = [
        "| round | workload | server | req/s | p50 ms | p99 ms | requests | errors | peak RSS MB | CPU ms/req "
        "| other CPU % | processes | start s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        flag = " (disturbed)" if r.other_cpu_pct > DISTURBED_PCT else ""
        lines.append(
            f"| {r.round} | {r.workload} | {r.server} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} "
            f"| {r.requests} | {r.errors} | {r.rss_peak_mb:.0f} | {r.cpu_ms_per_req:.2f} "
            f"| {r.other_cpu_pct:.0f}{flag} | {r.processes} | {r.startup_s:.1f} |"
        )
    return lines


def failures_section(failures: Sequence[Failure]) -> list[str]:
    if not failures:
        return []
    lines = [
        "## Failed runs (left out of the medians)",
        "",
        "| round | workload | server | error |",
        "|---:|---|---|---|",
    ]
    for f in failures:
        error = " ".join(f.error.split()).replace("|", "/")[:300]
        lines.append(f"| {f.round} | {f.workload} | {f.server} | {error} |")
    return [*lines, ""]


def disturbance(records: Sequence[Record]) -> str:
    if not records:
        return ""
    disturbed = [r for r in records if r.other_cpu_pct > DISTURBED_PCT]
    low, high = min(r.other_cpu_pct for r in records), max(r.other_cpu_pct for r in records)
    if not disturbed:
        return f"In this report no run was disturbed (other CPU {low:.0f}-{high:.0f}%)."
    return (
        f"**In this report {len(disturbed)} of {len(records)} runs were disturbed** (other CPU {low:.0f}-{high:.0f}% "
        "of the machine): their req/s and latencies are lower than the machine gives when quiet, and the ratios "
        "of req/s are noisier than the ratios of CPU ms/req."
    )


def render_report(meta: dict[str, Any], ctx: Context) -> str:
    args, records, smokes = meta["args"], ctx.records, ctx.smokes
    lines = [
        "# Benchmark results",
        "",
        f"Written by `bench/run.py` on {meta['date']}; {meta['rounds_done']} of {args['rounds']} rounds completed. "
        "Figures are the **median over rounds**; see [README.md](README.md) for the method and caveats.",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Project code measured: {meta['project_code']}",
        "",
        *results_table(records),
        "",
        "## Targets",
        "",
        *targets_table(records),
        "",
        *failures_section(ctx.failures),
        "## Setup",
        "",
        f"- Machine: {meta['machine']}",
        f"- Versions: {meta['versions']}",
        f"- Load: wrk, {min(args['wrk_threads'], args['concurrency'])} thread(s), {args['concurrency']} connections "
        f"(closed loop, keep-alive), {args['warmup']} s unmeasured warm-up, then {args['duration']} s measured; "
        "the server is started fresh for every run and waited on until idle between warm-up and measurement.",
        f"- Source: `{meta['source']}` ({meta['source_info']}), to width {TARGET_WIDTH}, WebP q80 (`{QUERY}`).",
        f"- cold-webp: every request a new URL (widths {TARGET_WIDTH - BAND // 2}..{TARGET_WIDTH + BAND // 2 - 1}, "
        f"a new hard-link alias every {BAND} requests; warm-up on its own aliases). hot-webp: `{meta['hot_path']}`.",
        "- Servers (uvicorn on uvloop + httptools; "
        + (
            "the project through `imgproxy serve`, which logs at level info with an access-log line per request; "
            "the naive server at level warning without access log):"
            if args["launcher"] == "cli"
            else "both at log level warning without access log):"
        ),
        *(f"  - {name}: `{cmd}`" for name, cmd in meta["commands"].items()),
        f"- Project settings: defaults (result cache 256 MiB, render threads = CPU count) plus {meta['server_set']}.",
        "",
        "Columns: errors = HTTP status >= 400 + socket errors + timeouts, summed over rounds; peak RSS = VmHWM summed "
        "over the server's process tree at the end of the measured window; CPU ms/req = utime + stime of that tree "
        "during the window / completed requests; other CPU % = share of all CPUs used by anything but the server, "
        f"wrk and this script during the window (a round above {DISTURBED_PCT:g}% was disturbed by other processes).",
        "",
        "Caveat: the machine has "
        f"{os.cpu_count()} cores shared by the server and wrk (one wrk thread takes a good part of a core on the "
        "hot workload), and other processes (test suites of other sessions) may have been running: see the "
        "other CPU % column. Compare servers within this report, not across machines or runs. " + disturbance(records),
        "",
        "## Smoke check (first response of each server)",
        "",
        "| server | status | content-type | decoded | bytes |",
        "|---|---:|---|---|---:|",
        *(
            f"| {s.server} | {s.status} | {s.content_type} | {s.format} {s.size[0]}x{s.size[1]} | {s.bytes} |"
            for s in smokes.values()
        ),
        "",
        "## Every run",
        "",
        *rounds_table(records),
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"nproc {os.cpu_count()}, {model}, {mem:.0f} GiB RAM, Linux {platform.release()}, load average at start {load}"
    )


def versions() -> str:
    def pkg(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "n/a"

    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    wrk_line = (wrk.stdout or wrk.stderr).splitlines()[0].split(" Copyright")[0] if (wrk.stdout or wrk.stderr) else "?"
    return (
        f"Python {platform.python_version()}, Pillow {pkg('pillow')} (libjpeg-turbo {features.version('jpg')}, "
        f"libwebp {features.version('webp')}), FastAPI {pkg('fastapi')}, uvicorn {pkg('uvicorn')}, "
        f"uvloop {pkg('uvloop')}, httptools {pkg('httptools')}, {wrk_line}"
    )


def display_command() -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(Path.cwd())
    return shlex.join([str(python), str(script), *sys.argv[1:]])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20, help="measured seconds per run (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured warm-up seconds per run (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the report gives medians (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="server processes, both servers (default 1)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: 2-core machine)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument(
        "--launcher",
        choices=("uvicorn", "cli"),
        default="uvicorn",
        help="start the project with `uvicorn --factory imgproxy.app:create_app` at log level warning (default), "
        "or with `imgproxy serve` (which runs uvicorn at log level info with access logs)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra environment for the servers"
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="source JPEG (default: corpus big.jpg)")
    parser.add_argument("--output", type=Path, default=BENCH / "BASELINE.md", help="report (default bench/BASELINE.md)")
    parser.add_argument(
        "--ref",
        help="measure the project as of this git revision (its imgproxy/ exported to the temp dir and put first on "
        "the servers' PYTHONPATH) instead of the working tree, e.g. HEAD while the working tree is being edited",
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary docroot and server logs")
    args = parser.parse_args(argv)
    for name in ("duration", "concurrency", "rounds", "workers", "wrk_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if any("=" not in item for item in args.set):
        parser.error("--set takes KEY=VALUE")
    return args


def preflight(args: argparse.Namespace) -> str | None:
    """A one-line reason the benchmark cannot run here, or None."""
    if shutil.which("wrk") is None:
        return "wrk is not installed: install it with `sudo apt-get install -y wrk` (Debian/Ubuntu) or build it from https://github.com/wg/wrk"
    for module in ("imgproxy", "fastapi", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            return f"`{module}` is not importable by {sys.executable}: run with the project's .venv/bin/python"
    if not args.source.is_file():
        return f"source image {args.source} not found (pass --source)"
    return None


@contextlib.contextmanager
def temp_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="imgproxy-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"[bench] kept {path}", flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> int:
    docroot = tmp / "docroot"
    docroot.mkdir()
    source = args.source.resolve()
    shutil.copyfile(source, docroot / source.name)  # aliases are hard links to this copy (same filesystem)
    env = server_env(docroot, args.set)
    ref = None
    if args.ref:
        ref = f"{args.ref} = {export_ref(args.ref, tmp / 'project')[:12]}"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp / "project"), env.get("PYTHONPATH")]))
    quieted = quiet_project_logs(env, tmp)
    ctx = Context(args, tmp, docroot, source, env)
    with Image.open(source) as image:
        source_info = f"{image.format} {image.width}x{image.height}, {source.stat().st_size:,} bytes"
    meta: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": display_command(),
        "machine": machine(),
        "versions": versions(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "source": os.path.relpath(source, ROOT),
        "source_info": source_info,
        "hot_path": hot_path(source),
        "commands": {
            n: shlex.join(server_argv(n, 0, args)).replace("--port 0", "--port PORT").replace(f"{ROOT}{os.sep}", "")
            for n in SERVERS
        },
        "server_set": ", ".join(f"`{s}`" for s in [*([quieted] if quieted else []), *args.set]) or "nothing else",
        "project_code": project_code(ctx.env, tmp, ref),
        "rounds_done": 0,
    }
    print(f"[bench] {meta['machine']}\n[bench] {meta['versions']}\n[bench] {meta['project_code']}", flush=True)
    for rnd in range(1, args.rounds + 1):
        order = SERVERS if rnd % 2 else SERVERS[::-1]
        for workload in args.workloads:
            for name in order:
                run_one(ctx, workload, name, rnd)
        meta["rounds_done"] = rnd
        args.output.write_text(render_report(meta, ctx))
    print()
    print("\n".join(results_table(ctx.records)))
    print()
    print("\n".join(targets_table(ctx.records)))
    print(f"\n[bench] report: {args.output}")
    if args.keep_temp:
        data = {"records": [asdict(r) for r in ctx.records], "failures": [asdict(f) for f in ctx.failures]}
        (tmp / "records.json").write_text(json.dumps(data, indent=1))
    return 1 if ctx.failures else 0


def run_one(ctx: Context, workload: str, name: str, rnd: int) -> None:
    """Measure one (workload, server) of a round; a failure is recorded and the benchmark goes on."""
    started = time.monotonic()
    prefix = f"[r{rnd} {workload} {name:<7}]"
    try:
        record = measure(ctx, workload, name, rnd)
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        ctx.failures.append(Failure(rnd, workload, name, str(exc)))
        print(f"{prefix} FAILED: {exc}", flush=True)
        return
    ctx.records.append(record)
    print(
        f"{prefix} {record.rps:8.1f} req/s  p50 {record.p50_ms:7.1f} ms  p99 {record.p99_ms:7.1f} ms  "
        f"errors {record.errors}  repeats {record.repeats}  rss {record.rss_peak_mb:5.0f} MB  "
        f"cpu {record.cpu_ms_per_req:6.2f} ms/req  other {record.other_cpu_pct:3.0f}%  "
        f"({time.monotonic() - started:.0f} s)",
        flush=True,
    )


def export_ref(ref: str, dest: Path) -> str:
    """Extract the `imgproxy` package of git revision `ref` into `dest`; return the full commit id."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if sha.returncode:
        raise SystemExit(f"bench: --ref {ref}: not a commit of {ROOT}")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", sha.stdout.strip(), "imgproxy"],
        capture_output=True,
        check=True,
    )
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout), mode="r:") as tar:
        tar.extractall(dest, filter="data")
    return sha.stdout.strip()


def quiet_project_logs(env: dict[str, str], cwd: Path) -> str | None:
    """Newer versions of the project configure logging themselves (`IMGPROXY_LOG__LEVEL`, default info: a JSON
    access-log line per request) over uvicorn's `--log-level`. Set it to warning when the project knows the
    setting and `--set` did not choose; an older version would refuse the unknown name, so ask it first."""
    if "IMGPROXY_LOG__LEVEL" in env:
        return None
    code = "from imgproxy.settings import known_keys; print('LOG__LEVEL' in known_keys())"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.stdout.strip() != "True":
        return None
    env["IMGPROXY_LOG__LEVEL"] = "warning"
    return "IMGPROXY_LOG__LEVEL=warning"


def project_code(env: dict[str, str], cwd: Path, ref: str | None) -> str:
    """Where the servers import `imgproxy` from, and the git state of that checkout."""
    probe = [sys.executable, "-c", "import imgproxy, pathlib; print(pathlib.Path(imgproxy.__file__).parent.parent)"]
    done = subprocess.run(probe, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    where = Path(done.stdout.strip() or ".")
    git = ["git", "-C", str(where)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "imgproxy"], capture_output=True, text=True, check=False
    )
    if ref is not None:
        return f"git `{ref}`, exported with `git archive` into the run's temp dir (the working tree was not used)"
    if head.returncode:
        return f"`{where}` (not a git checkout)"
    changed = len(dirty.stdout.splitlines())
    state = f"with uncommitted changes in {changed} file(s) under imgproxy/" if changed else "clean"
    return f"`{where}`, git {head.stdout.strip()}, {state}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight(args)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers
    with temp_dir(args.keep_temp) as tmp:
        return run(args, tmp)


if __name__ == "__main__":
    sys.exit(main())
