"""Build the C extensions in place, next to their sources (``SOURCES``: codec, UDP, LSTM).

    .venv/bin/python scripts/build_native.py            # what `make native` runs
    python scripts/build_native.py --require            # the Docker images: all or fail

gcc and the Python headers (Debian: python3-dev) are all it needs; nothing is
downloaded. It rebuilds only when the source is newer than the built module. The
daemon runs without it (the pure-Python path, docs/operations.md), so when gcc or the
headers are missing it says so and succeeds (``make run`` still runs); a source that
does not compile fails. With ``--require`` (the Docker images' build stage) a missing
compiler or header fails too. INFERENCE_PURE_PYTHON=1 makes the daemon ignore a built one.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (
    ROOT / "factory" / "_fastcodec.c",
    ROOT / "netlib" / "_fastudp.c",
    ROOT / "commonlib" / "models" / "_lstmkernel.c",
)


def target(source: Path) -> Path:
    """The extension module's path for this interpreter."""
    return source.with_name(source.stem + str(sysconfig.get_config_var("EXT_SUFFIX")))


def main(argv: list[str] | None = None) -> int:
    """Compile each source that is out of date; the first failing compiler's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--require",
        action="store_true",
        help="fail (exit 1) when gcc or Python.h is missing instead of leaving pure Python",
    )
    args = parser.parse_args(argv)
    for source in SOURCES:
        status = build(source, args.require)
        if status:
            return status
    return 0


def build(source: Path, require: bool = False) -> int:
    """Compile ``source`` when its module is older than it (1 without a compiler if ``require``)."""
    out = target(source)
    if out.exists() and out.stat().st_mtime >= source.stat().st_mtime:
        return 0
    include = Path(sysconfig.get_paths()["include"])
    if shutil.which("gcc") is None or not (include / "Python.h").exists():
        missing = (
            "build_native: gcc or Python.h is missing (Debian: apt-get install gcc python3-dev)"
        )
        if require:
            print(f"{missing}; --require: failing", file=sys.stderr)
            return 1
        print(f"{missing}; the daemon runs its pure-Python path", file=sys.stderr)
        return 0
    command = [
        "gcc",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        # a * b + c is never fused behind the code's back: the LSTM kernel chooses where
        # it uses fma, so a row rounds the same on every path that promises it.
        "-ffp-contract=off",
        "-shared",
        "-fPIC",
        f"-I{include}",
        str(source),
        "-o",
        str(out),
        "-lm",
    ]
    print(" ".join(command), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
