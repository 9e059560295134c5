"""Print the configuration reference (every key, its default, its comment) as Markdown.

.venv/bin/python scripts/config_reference.py   # pasted into docs/operations.md
"""

from __future__ import annotations

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


def main() -> None:
    """Print the table."""
    print("| key | default | meaning |")
    print("|---|---|---|")
    for key, default, doc in rows(ROOT / "config" / "default.yaml"):
        print(f"| `{key}` | `{default}` | {doc} |")


if __name__ == "__main__":
    main()
