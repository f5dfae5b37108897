"""Regenerate the README's gallery: each example URL rendered by the service itself, saved as a small
WebP under docs/gallery/, and the table between the gallery markers rewritten.

    .venv/bin/python scripts/gallery.py
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "gallery"
BEGIN, END = "<!-- gallery:begin -->", "<!-- gallery:end -->"

EXAMPLES: list[tuple[str, str]] = [
    ("/img/chelsea.png?w=240&fm=webp", "resize to a width"),
    ("/img/landscape.jpg?w=240&h=240&fit=cover&fm=webp", "cover crop; stored sideways, EXIF orientation applied"),
    ("/img/astronaut.png?w=150&h=240&fit=cover&g=face&fm=webp", "portrait crop centred on the face"),
    ("/img/chelsea.png?w=150&h=240&fit=cover&g=east&fm=webp", "portrait cover crop anchored east"),
    ("/img/coffee.png?w=240&h=240&fit=contain&bg=1f2937&fm=webp", "contain: padded to exactly 240x240"),
    ("/img/astronaut.png?w=240&radius=48&fm=webp", "rounded corners (transparent)"),
    ("/img/coffee.png?w=240&grayscale=1&contrast=1.4&fm=webp", "grayscale with more contrast"),
    ("/img/chelsea.png?w=240&blur=4&fm=webp", "Gaussian blur"),
    ("/img/landscape.jpg?w=240&rot=90&flip=h&fm=webp", "rotate 90 and mirror"),
    ("/img/coffee.png?w=240&saturation=1.8&brightness=1.1&pad=10&bg=ffffff&fm=webp", "saturation, brightness, padding"),
]


def slug(index: int) -> str:
    return f"{index:02d}.webp"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    client = TestClient(create_app(Settings(_env_file=None, log={"level": "warning"})))
    rows = ["| URL | result | what it shows |", "|---|---|---|"]
    for index, (url, caption) in enumerate(EXAMPLES, start=1):
        response = client.get(url)
        response.raise_for_status()
        (OUT / slug(index)).write_bytes(response.content)
        rows.append(f"| `{url}` | ![{caption}](docs/gallery/{slug(index)}) | {caption} |")
    readme = ROOT / "README.md"
    section = f"{BEGIN}\n" + "\n".join(rows) + f"\n{END}"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, readme.read_text(), flags=re.S)
    readme.write_text(text)


if __name__ == "__main__":
    main()
