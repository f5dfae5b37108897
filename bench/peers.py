"""Run the shared peer harness (../shared/bench) with this project plugged in, then write
bench/RESULTS.md (the peers' figures from the same run, the targets, the machine and versions) and
bench/RESULTS.png (req/s and CPU ms per request, per peer and workload).

    .venv/bin/python bench/peers.py                          # W1-W5, 1 and 2 workers, 3 rounds (~1 h)
    .venv/bin/python bench/peers.py --rounds 1 --duration 5  # a quick look (~10 min)
    .venv/bin/python bench/peers.py --report bench-results/peers-2026-11-24.json   # redraw from raw data

Needs the harness's peers once: `bash ../shared/bench/setup_peers.sh` (wrk, nginx, venvs in /tmp/peers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT.parent / "shared" / "bench"
RESULTS = ROOT / "bench" / "RESULTS.md"
WORKLOADS = ("W1", "W2", "W3", "W4", "W5")
FIGURES = (
    ("rps", 1),
    ("p50_ms", 1),
    ("p99_ms", 1),
    ("cpu_ms_per_req", 2),
    ("rss_peak_mb", 0),
    ("bytes", 0),
    ("other_cpu_pct", 0),
    ("rounds", 0),
)

# (description, workloads, config, reference config, ratio: "rps" (>=) or "cpu" (<=), bound)
TARGETS: list[tuple[str, tuple[str, ...], str, str, str, float]] = [
    ("cold req/s vs pyvips", ("W1", "W2", "W3"), "project-1w", "vips-1w", "rps", 1.3),
    ("cold req/s vs thumbor", ("W1", "W2", "W3"), "project-1w", "thumbor-1w", "rps", 2.5),
    ("W4 req/s vs pyvips", ("W4",), "project-1w", "vips-1w", "rps", 1.0),
    ("W4 req/s vs thumbor", ("W4",), "project-1w", "thumbor-1w", "rps", 4.0),
    ("CPU ms/req vs pyvips (at most)", ("W1", "W2", "W3", "W4"), "project-1w", "vips-1w", "cpu", 0.8),
    ("W5 hit req/s vs bare Starlette", ("W5",), "project-1w", "starlette-1w", "rps", 0.8),
    ("W5 hit req/s vs thumbor result storage", ("W5",), "project-1w", "thumbor-cached-1w", "rps", 2.0),
]


def run_harness(args: argparse.Namespace) -> Path:
    python = Path(sys.executable).parent
    serve = (
        "env IMGPROXY_SOURCE__LOCAL_ROOT={root} IMGPROXY_LOG__LEVEL=warning IMGPROXY_HTTP__PLAYGROUND=false "
        f"{python}/imgproxy serve --host 127.0.0.1 --port {{port}}"
    )
    env = {
        **os.environ,
        "TARGET_CMD": serve,
        "TARGET_CMD_2W": serve + " --workers 2",
        "TARGET_CWD": str(ROOT),
        "TARGET_HEALTH_PATH": "/healthz",
        "ROUNDS": str(args.rounds),
        "DURATION": str(args.duration),
        "WARMUP": str(args.warmup),
        "WORKERS": args.workers,
        "WORKLOADS": args.workloads,
        "RESULTS_DIR": str(ROOT / "bench-results"),
        "RUN_LABEL": "imgproxy vs peers",
    }
    if args.peers:
        env["PEERS"] = args.peers
    started = datetime.datetime.now().timestamp()
    subprocess.run(["bash", str(HARNESS / "run_peers.sh")], cwd=ROOT, env=env, check=True)
    reports = [p for p in (ROOT / "bench-results").glob("peers-*.json") if p.stat().st_mtime >= started]
    return max(reports, key=lambda p: p.stat().st_mtime)


def medians(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    table: dict[tuple[str, str], dict[str, float]] = {}
    for config in {r["config"] for r in records}:
        for workload in WORKLOADS:
            ok = [r for r in records if r["config"] == config and r["workload"] == workload and "error" not in r]
            if not ok:
                continue
            table[(config, workload)] = {
                key: statistics.median(r[key] for r in ok)
                for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "rss_peak_mb", "other_cpu_pct")
                if all(r.get(key) is not None for r in ok)
            } | {"bytes": ok[0].get("smoke", {}).get("out_bytes", 0), "rounds": len(ok)}
    return table


def target_rows(table: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    rows = [
        "| target | workload | project | reference | ratio | required | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for description, workloads, config, reference, kind, bound in TARGETS:
        key = "rps" if kind == "rps" else "cpu_ms_per_req"
        for workload in workloads:
            ours, theirs = table.get((config, workload)), table.get((reference, workload))
            if not ours or not theirs or not theirs.get(key):
                rows.append(f"| {description} | {workload} | - | - | - | - | not measured |")
                continue
            ratio = ours[key] / theirs[key]
            ok = ratio >= bound if kind == "rps" else ratio <= bound
            sign = ">=" if kind == "rps" else "<="
            rows.append(
                f"| {description} | {workload} | {ours[key]:.1f} | {theirs[key]:.1f} ({reference}) | {ratio:.2f}x "
                f"| {sign} {bound}x | {'PASS' if ok else 'MISS'} |"
            )
    return rows


def write(json_path: Path, command: str, output: Path) -> None:
    data = json.loads(json_path.read_text())
    meta, records = data["meta"], data["records"]
    table = medians(records)
    configs = sorted({config for config, _ in table}, key=lambda c: (not c.startswith("project"), c))
    lines = [
        "# Benchmark results: imgproxy and its peers",
        "",
        f"Measured by `{command}` on {meta.get('date', '?')}, driving the shared harness (`../shared/bench`): "
        "every server started fresh per workload, wrk over loopback, 8 connections, rounds interleaved. "
        "Figures are medians over the rounds. Compare within this report only.",
        "",
        f"Machine: {meta.get('machine', '?')}",
        "",
        "Versions:",
        *[f"- {name}: {value}" for name, value in meta.get("versions", {}).items()],
        f"- imgproxy: git {_git_head()}",
        "",
        "Workloads: W1 12 MP JPEG → 300 px WebP (cold), W2 same → JPEG, W3 1.9 MP JPEG → 800 px JPEG, "
        "W4 3 MP RGBA PNG → 200 px PNG, W5 W1's URL repeated (hot).",
        "",
        f"![req/s and CPU ms per request]({output.with_suffix('.png').name})",
        "",
        "## Targets",
        "",
        *target_rows(table),
        "",
        "## All figures",
        "",
        "| config | workload | req/s | p50 ms | p99 ms | CPU ms/req | peak RSS MB | out bytes | other CPU % | rounds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload in WORKLOADS:
        for config in configs:
            row = table.get((config, workload))
            if row:
                cells = [f"{row.get(key, 0):.{digits}f}" for key, digits in FIGURES]
                lines.append(f"| {config} | {workload} | " + " | ".join(cells) + " |")
    lines += ["", f"Raw per-round records: `{json_path.resolve().relative_to(ROOT)}` (not committed)."]
    output.write_text("\n".join(lines) + "\n")
    chart(table, configs, output.with_suffix(".png"))


def chart(table: dict[tuple[str, str], dict[str, float]], configs: list[str], path: Path) -> None:
    import matplotlib  # noqa: PLC0415  (a benchmark-only dependency)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(configs))
    for index, config in enumerate(configs):
        xs = [w + (index - len(configs) / 2) * width for w in range(len(WORKLOADS))]
        for axis, key in zip(axes, ("rps", "cpu_ms_per_req"), strict=True):
            values = [table.get((config, w), {}).get(key, 0.0) for w in WORKLOADS]
            axis.bar(xs, values, width, label=config)
    axes[0].set_title("throughput, req/s (higher is better; log scale)")
    axes[0].set_yscale("log")
    axes[1].set_title("CPU ms per request (lower is better; log scale)")
    axes[1].set_yscale("log")
    for axis in axes:
        axis.set_xticks(range(len(WORKLOADS)), WORKLOADS)
        axis.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _git_head() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return run.stdout.strip() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--peers", default="", help="harness PEERS (default: all)")
    parser.add_argument("--report", type=Path, help="only rewrite RESULTS.md and the chart from a harness .json")
    parser.add_argument("--output", type=Path, default=RESULTS, help="report path (the chart goes beside it)")
    args = parser.parse_args()
    command = "bench/peers.py " + " ".join(sys.argv[1:])
    json_path = args.report or run_harness(args)
    write(json_path, command.strip(), args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
