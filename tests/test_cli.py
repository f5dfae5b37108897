"""The command line: `imgproxy srcset` (the /srcset answer, offline) and `imgproxy render` (pre-rendering).

Each command runs as a real subprocess of the installed entry point, with a clean environment (PATH and
HOME, plus the IMGPROXY_* variables a test sets) in a temporary directory, so no `.env` is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from PIL import Image
from starlette.testclient import TestClient

from imgproxy import prerender
from imgproxy.options import Format, Limits
from imgproxy.pipeline.render import RenderContext
from imgproxy.settings import SAMPLES_DIR, Settings
from imgproxy.signing import sign
from tests.conftest import decode

MakeClient = Callable[..., TestClient]

IMGPROXY = Path(sys.executable).parent / "imgproxy"
KEY = "k3y-0123456789abcdefXYZ"
TIMEOUT = 90  # seconds per command: generous for a loaded CI machine, still bounded
SUMMARY = re.compile(
    r"^(\d+) rendered, (\d+) already there, (\d+) failed; "
    r"([\d,]+) bytes of sources -> ([\d,]+) bytes of all variants \((-?\d+)% saved\)$"
)


def run(args: list[str], cwd: Path, program: Path = IMGPROXY, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", str(cwd)), **env}
    return subprocess.run(
        [str(program), *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def summary_of(stdout: str) -> tuple[int, int, int, int, int]:
    """(rendered, already there, failed, source bytes, output bytes) of the summary line."""
    match = SUMMARY.match(stdout.strip().splitlines()[-1])
    assert match, stdout
    counts = [int(value.replace(",", "")) for value in match.groups()[:5]]
    return counts[0], counts[1], counts[2], counts[3], counts[4]


def files_under(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def sample_tree(root: Path) -> Path:
    """A folder of originals: two images, one in a subfolder, and two files that are not images."""
    source = root / "originals"
    (source / "sub").mkdir(parents=True)
    shutil.copy(SAMPLES_DIR / "chelsea.png", source / "chelsea.png")
    shutil.copy(SAMPLES_DIR / "coffee.png", source / "coffee.png")
    shutil.copy(SAMPLES_DIR / "astronaut.png", source / "sub" / "astronaut.png")
    (source / "notes.txt").write_text("not an image\n")
    (source / "fake.jpg").write_text("<html>a page, whatever its name says</html>\n")
    return source


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


# --- imgproxy srcset ---


def test_srcset_prints_what_the_http_endpoint_answers(
    tmp_path: Path, source_root: Path, make_client: MakeClient
) -> None:
    sizes = "(max-width: 600px) 100vw, 600px"
    result = run(
        ["srcset", "chelsea.png", "--widths", "320,640", "--options", "fm=webp", "--sizes", sizes],
        tmp_path,
        IMGPROXY_SOURCE__LOCAL_ROOT=str(source_root),
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    client = make_client()
    query = urlencode({"widths": "320,640", "fm": "webp", "sizes": sizes})
    answer = client.get(f"/srcset/chelsea.png?{query}").json()
    assert printed == answer
    assert [c["descriptor"] for c in printed["candidates"]] == ["336w", "422w"]
    assert printed["sizes"] == sizes
    for candidate in printed["candidates"]:
        response = client.get(candidate["url"])
        assert response.headers["content-type"] == "image/webp"
        assert decode(response.content).width == candidate["width"]


def test_srcset_fixed_width(tmp_path: Path, source_root: Path, make_client: MakeClient) -> None:
    result = run(["srcset", "landscape.jpg", "--width", "200"], tmp_path, IMGPROXY_SOURCE__LOCAL_ROOT=str(source_root))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == make_client().get("/srcset/landscape.jpg?w=200").json()
    assert [(c["descriptor"], c["width"]) for c in printed["candidates"]] == [("1x", 200), ("2x", 400), ("3x", 600)]
    assert (printed["width"], printed["height"], printed["sizes"]) == (200, 133, None)


def test_srcset_signs_its_urls_when_the_server_has_keys(
    tmp_path: Path, source_root: Path, make_client: MakeClient
) -> None:
    result = run(
        ["srcset", "chelsea.png", "--width", "100", "--options", "fm=webp"],
        tmp_path,
        IMGPROXY_SOURCE__LOCAL_ROOT=str(source_root),
        IMGPROXY_SECURITY__SIGNING_KEYS=json.dumps([KEY]),
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    client = make_client(security={"signing_keys": [KEY]})
    assert printed == client.get(sign("/srcset/chelsea.png?fm=webp&w=100", KEY.encode())).json()
    for candidate in printed["candidates"]:
        url = candidate["url"]
        assert [name for name, _ in parse_qsl(urlsplit(url).query)][-1] == "s"
        response = client.get(url)
        assert response.status_code == 200, response.text
        assert decode(response.content).width == candidate["width"]
        assert client.get(url.replace("fm=webp", "fm=png")).status_code == 403


def test_srcset_of_a_missing_file_fails_clearly(tmp_path: Path, source_root: Path) -> None:
    result = run(["srcset", "no/such.png"], tmp_path, IMGPROXY_SOURCE__LOCAL_ROOT=str(source_root))
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.startswith("imgproxy: ")
    assert "no such image" in result.stderr
    assert "Traceback" not in result.stderr


# --- imgproxy render ---


def test_render_mirrors_the_tree_and_resumes(tmp_path: Path) -> None:
    source = sample_tree(tmp_path)
    out = tmp_path / "public"
    args = ["render", str(source), str(out), "--widths", "100,200", "--format", "webp", "--workers", "2"]
    images = {"chelsea.png": "chelsea", "coffee.png": "coffee", "sub/astronaut.png": "sub/astronaut"}
    for path in source.rglob("*"):
        set_mtime(path, time.time() - 300)  # originals well in the past (see the touch below)

    # First run, with the progress bar.
    first = run(args, tmp_path)
    assert first.returncode == 0, first.stderr
    expected = {f"{stem}-{w}w.webp" for stem in images.values() for w in (100, 200)}
    assert files_under(out) == expected  # mirrored, no variant of the non-images, no .partial-* left
    for name in expected:
        with Image.open(out / name) as image:
            assert image.format == "WEBP"
            assert image.width == int(name.rsplit("-", 1)[1].removesuffix("w.webp"))
    source_bytes = sum((source / path).stat().st_size for path in images)
    output_bytes = sum((out / name).stat().st_size for name in expected)
    assert summary_of(first.stdout) == (6, 0, 0, source_bytes, output_bytes)
    assert "% saved" in first.stdout
    assert "6/6" in first.stderr and "100%" in first.stderr  # tqdm's bar

    # Second run: everything is there already; --quiet: no bar.
    old = time.time() - 200
    for name in expected:
        set_mtime(out / name, old)
    second = run([*args, "--quiet"], tmp_path)
    assert second.returncode == 0, second.stderr
    assert summary_of(second.stdout) == (0, 6, 0, source_bytes, output_bytes)
    assert second.stderr == ""
    assert all((out / name).stat().st_mtime == old for name in expected)

    # A newer original: only its variants are rendered again.
    set_mtime(source / "coffee.png", time.time() - 100)
    third = run([*args, "--quiet"], tmp_path)
    assert third.returncode == 0, third.stderr
    assert summary_of(third.stdout)[:3] == (2, 4, 0)
    renewed = {name for name in expected if (out / name).stat().st_mtime != old}
    assert renewed == {"coffee-100w.webp", "coffee-200w.webp"}
    assert files_under(out) == expected


def test_render_applies_a_preset(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(SAMPLES_DIR / "chelsea.png", source / "cat.png")
    out = tmp_path / "out"
    presets = json.dumps({"thumb": "h=100&fit=cover"})
    args = ["render", str(source), str(out), "--preset", "thumb", "--widths", "100,200", "--format", "jpeg"]
    result = run([*args, "--quiet"], tmp_path, IMGPROXY_PRESETS=presets)
    assert result.returncode == 0, result.stderr
    assert summary_of(result.stdout)[:3] == (2, 0, 0)
    assert files_under(out) == {"cat-100w.jpg", "cat-200w.jpg"}
    for name, size in (("cat-100w.jpg", (100, 100)), ("cat-200w.jpg", (200, 100))):
        with Image.open(out / name) as image:
            assert (image.format, image.size) == ("JPEG", size)


def test_render_refuses_an_unknown_preset(tmp_path: Path) -> None:
    source = sample_tree(tmp_path)
    out = tmp_path / "out"
    presets = json.dumps({"thumb": "h=100&fit=cover"})
    result = run(["render", str(source), str(out), "--preset", "nope", "--quiet"], tmp_path, IMGPROXY_PRESETS=presets)
    assert result.returncode == 2
    assert "unknown preset 'nope'" in result.stderr and "thumb" in result.stderr
    assert not out.exists()


def test_render_takes_a_preset_the_server_accepts(tmp_path: Path, make_client: MakeClient) -> None:
    presets = {"card": "width=300&format=jpeg&q=70", "banner": "resize=300x100"}
    client = make_client(presets=presets)
    for name in presets:  # the server applies them under a request's own w and fm
        response = client.get(f"/img/chelsea.png?preset={name}&w=100&fm=webp")
        assert response.status_code == 200, response.text
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(SAMPLES_DIR / "chelsea.png", source / "cat.png")
    for name in presets:
        out = tmp_path / name
        result = run(
            ["render", str(source), str(out), "--preset", name, "--widths", "100", "--format", "webp", "--quiet"],
            tmp_path,
            IMGPROXY_PRESETS=json.dumps(presets),
        )
        assert result.returncode == 0, result.stderr
        with Image.open(out / "cat-100w.webp") as image:
            assert (image.format, image.width) == ("WEBP", 100)


def test_render_into_a_folder_inside_the_source_resumes(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(SAMPLES_DIR / "chelsea.png", site / "cat.png")
    args = ["render", str(site), str(site / "img"), "--widths", "100", "--quiet"]
    assert run(args, tmp_path).returncode == 0
    again = run(args, tmp_path)
    assert again.returncode == 0, again.stderr
    assert summary_of(again.stdout)[:2] == (0, 1)
    assert files_under(site) == {"cat.png", "img/cat-100w.webp"}


# --- prerender in process: failures leave nothing behind ---


def context_and_limits() -> tuple[RenderContext, Limits]:
    settings = Settings(_env_file=None)
    return RenderContext(limits=settings.limits, formats=settings.formats), Limits()


def test_a_failed_render_is_counted_and_leaves_no_file(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(SAMPLES_DIR / "chelsea.png", source / "cat.png")
    full = (SAMPLES_DIR / "landscape.jpg").read_bytes()
    (source / "broken.jpg").write_bytes(full[: len(full) // 3])  # sniffs as a JPEG, does not decode
    out = tmp_path / "out"
    jobs = prerender.plan_jobs(source, out, lambda w: [("w", str(w)), ("fm", "webp")], [100], Format.WEBP)
    assert len(jobs) == 2
    summary = prerender.run(jobs, *context_and_limits(), workers=2, progress=False)
    assert (summary.rendered, summary.skipped, len(summary.failed)) == (1, 0, 1)
    assert "broken.jpg" in summary.failed[0]
    assert files_under(out) == {"cat-100w.webp"}
    assert "1 failed" in summary.text()


def failing_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    raise OSError(28, "No space left on device")


def test_an_interrupted_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(SAMPLES_DIR / "chelsea.png", source / "cat.png")
    out = tmp_path / "out"
    jobs = prerender.plan_jobs(source, out, lambda w: [("w", str(w)), ("fm", "webp")], [100, 200], Format.WEBP)
    monkeypatch.setattr(os, "replace", failing_replace)  # prerender calls os.replace
    with contextlib.suppress(OSError):
        prerender.run(jobs, *context_and_limits(), workers=2, progress=False)
    monkeypatch.undo()
    assert files_under(out) == set()


def test_a_write_error_is_a_failed_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(SAMPLES_DIR / "chelsea.png", source / "cat.png")
    jobs = prerender.plan_jobs(source, tmp_path / "out", lambda w: [("w", str(w)), ("fm", "webp")], [100], Format.WEBP)
    monkeypatch.setattr(os, "replace", failing_replace)  # prerender calls os.replace
    summary = prerender.run(jobs, *context_and_limits(), workers=1, progress=False)
    assert (summary.rendered, len(summary.failed)) == (0, 1)


# --- the entry points ---


def test_python_dash_m_help(tmp_path: Path) -> None:
    result = run(["-m", "imgproxy", "--help"], tmp_path, program=Path(sys.executable))
    assert result.returncode == 0, result.stderr
    for command in ("serve", "sign", "srcset", "render"):
        assert command in result.stdout
