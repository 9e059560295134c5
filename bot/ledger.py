"""The failover request ledger: one JSON line per request, written beside the report.

``out.json`` gets ``out.ledger.jsonl``: each line is a request id with its outcome
(``answered``, ``retried-then-answered``, an error code, or ``lost``), the servers
each transmission went to, the server that answered and how many replies came (more
than one: duplicated). The report's lost and duplicate counts are counted from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def ledger_path(report_path: Path) -> Path:
    """Where the ledger of the report at ``report_path`` goes."""
    return report_path.with_name(report_path.stem + ".ledger.jsonl")


def write_ledger(report: dict[str, Any], report_path: Path | None) -> None:
    """Take the ledger out of ``report`` and write it beside ``report_path`` (if any)."""
    rows = report.pop("ledger", None)
    if rows is None or report_path is None:
        return
    path = ledger_path(report_path)
    with path.open("w") as out:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
    report["ledger_file"] = str(path)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The ledger lines of ``path``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line]
