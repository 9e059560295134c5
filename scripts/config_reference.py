"""The configuration reference (every key, its default, its comment) as Markdown.

.venv/bin/python scripts/config_reference.py           # print the table
.venv/bin/python scripts/config_reference.py --write   # replace it in docs/operations.md
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rows(path: Path) -> list[tuple[str, str, str]]:
    """(dotted key, default, documentation) for every leaf outside inference.models."""
    out = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = stripped.partition(":")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if value.strip() and not dotted.startswith("inference.models."):
            out.append((dotted, value.strip(), " ".join(comment)))
        comment = []
    return out


def table() -> str:
    """The Markdown table of every key."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, doc in rows(ROOT / "config" / "default.yaml"):
        lines.append(f"| `{key}` | `{default}` | {doc} |")
    return "\n".join(lines) + "\n"


def write_into_operations_doc() -> None:
    """Replace the table in docs/operations.md (from its header row to the first non-row)."""
    doc = ROOT / "docs" / "operations.md"
    lines = doc.read_text().splitlines(keepends=True)
    start = lines.index("| key | default | meaning |\n")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    doc.write_text("".join(lines[:start]) + table() + "".join(lines[end:]))


def main() -> None:
    """Print the table, or write it into docs/operations.md with --write."""
    if sys.argv[1:] == ["--write"]:
        write_into_operations_doc()
    else:
        print(table(), end="")


if __name__ == "__main__":
    main()
