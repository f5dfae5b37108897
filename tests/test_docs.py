"""The docs that cannot be allowed to drift from the code."""

import re
from pathlib import Path

from PIL import Image
from starlette.testclient import TestClient

from imgproxy.docs import render_readme
from imgproxy.settings import known_keys
from tests.conftest import decode

ROOT = Path(__file__).parent.parent


def test_readme_parameter_reference_is_generated_from_the_parser_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert render_readme(readme) == readme, "run `python -m imgproxy.docs` to regenerate the README table"


def test_readme_starts_with_the_two_setup_commands() -> None:
    first_block = (ROOT / "README.md").read_text().split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make serve", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"IMGPROXY_([A-Z0-9_]+)=", text))
    keys = known_keys()
    settable = {key for key in keys if not any(other.startswith(key + "__") for other in keys)}
    assert listed == settable


def test_readme_gallery_images_are_what_the_service_renders(client: TestClient) -> None:
    """Each gallery row's image exists and has the size and format its URL produces today."""
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"\| `(/img/[^`]+)` \| !\[[^\]]*\]\((docs/gallery/[0-9]+\.webp)\)", readme)
    assert len(rows) >= 8
    for url, image_path in rows:
        with Image.open(ROOT / image_path) as committed:
            rendered = decode(client.get(url).content)
            assert (committed.format, committed.size) == ("WEBP", rendered.size), url
