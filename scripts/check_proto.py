"""Fail when commonlib/wire's generated code is stale against proto/ (run `make proto`)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "commonlib" / "wire"


def main() -> int:
    """Regenerate into a temporary folder and compare byte for byte."""
    with tempfile.TemporaryDirectory() as tmp:
        protos = sorted(
            str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").glob("*.proto")
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                "-Iproto",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                *protos,
            ],
            cwd=ROOT,
            check=True,
        )
        stale = []
        for fresh in sorted(Path(tmp).iterdir()):
            committed = GENERATED / fresh.name
            if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
                stale.append(fresh.name)
    if stale:
        print(f"stale generated protobuf code: {', '.join(stale)}; run `make proto` and commit")
        return 1
    print(f"generated protobuf code is up to date ({', '.join(protos)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
