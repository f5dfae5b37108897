"""The Python client against the shared vectors (the JavaScript client's tests read the same file)."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imgproxy.client import ImageUrls

ROOT = Path(__file__).parent.parent
VECTORS = json.loads((ROOT / "tests" / "vectors" / "signing.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda case: case["target"])
def test_python_client_matches_the_vectors(case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    expires_in = None
    if "expires" in case:
        monkeypatch.setattr("imgproxy.client.time.time", lambda: float(case["expires"]))
        expires_in = 0
    assert ImageUrls().target(case["path"], expires_in=expires_in, **case["options"]) == case["target"]
    signed = ImageUrls(key=VECTORS["key"]).target(case["path"], expires_in=expires_in, **case["options"])
    assert signed == case["signed"]


def test_javascript_client_passes_its_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required for the JavaScript client's tests (.ci/run installs it)")
    run = subprocess.run(
        [node, "--test"], cwd=ROOT / "clients" / "js", capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "# fail 0" in run.stdout
