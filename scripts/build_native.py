"""Build the C hot path (factory/_fastcodec.c) in place, next to its source.

    .venv/bin/python scripts/build_native.py      # what `make native` runs

gcc and the Python headers (Debian: python3-dev) are all it needs; nothing is
downloaded. It rebuilds only when the source is newer than the built module. The
daemon runs without it (the pure-Python path, docs/operations.md), so when gcc or the
headers are missing it says so and succeeds (``make run`` still runs); a source that
does not compile fails. INFERENCE_PURE_PYTHON=1 makes the daemon ignore a built one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "factory" / "_fastcodec.c"


def target() -> Path:
    """The extension module's path for this interpreter."""
    return SOURCE.with_name("_fastcodec" + str(sysconfig.get_config_var("EXT_SUFFIX")))


def main() -> int:
    """Compile when out of date; the compiler's exit status."""
    out = target()
    if out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return 0
    include = Path(sysconfig.get_paths()["include"])
    if shutil.which("gcc") is None or not (include / "Python.h").exists():
        print(
            "build_native: gcc or Python.h is missing (Debian: apt-get install gcc "
            "python3-dev); the daemon runs its pure-Python path",
            file=sys.stderr,
        )
        return 0
    command = [
        "gcc",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-shared",
        "-fPIC",
        f"-I{include}",
        str(SOURCE),
        "-o",
        str(out),
    ]
    print(" ".join(command), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
