"""The README's parameter reference, generated from the same table as the parser and OpenAPI.

`python -m imgproxy.docs` rewrites the section between the markers; a test fails when it is stale.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from imgproxy.options import PARAMS, Limits

BEGIN, END = "<!-- params:begin -->", "<!-- params:end -->"


def _allowed(schema: dict[str, object]) -> str:
    if "enum" in schema:
        return ", ".join(f"`{value}`" for value in schema["enum"])  # type: ignore[attr-defined]
    if "minimum" in schema:
        return f"{schema['type']} {schema['minimum']}..{schema['maximum']}"
    if "pattern" in schema:
        return f"pattern `{schema['pattern']}`"
    return json.dumps(schema)


def param_table() -> str:
    limits = Limits()  # the defaults, as the README documents a default configuration
    rows = ["| param | aliases | allowed | meaning | example |", "|---|---|---|---|---|"]
    for param in PARAMS:
        aliases = ", ".join(f"`{alias}`" for alias in param.aliases)
        example = f"`{param.name}={param.example}`"
        allowed = _allowed(param.schema(limits))
        rows.append(f"| `{param.name}` | {aliases} | {allowed} | {param.description} | {example} |")
    return "\n".join(rows)


def render_readme(text: str) -> str:
    section = f"{BEGIN}\n{param_table()}\n{END}"
    return re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)


def main() -> int:
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    readme.write_text(render_readme(readme.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
