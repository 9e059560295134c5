"""The regression gate's goldens (commonlib/goldens.py): check them, or store new ones.

.venv/bin/python scripts/goldens.py           # check: one line per model version that moved
.venv/bin/python scripts/goldens.py --write   # store the current predictions (make goldens)
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import argparse  # noqa: E402

import commonlib.torch_env  # noqa: E402, F401 - sets OMP_NUM_THREADS before torch loads
from commonlib.goldens import check, served_models, write_goldens  # noqa: E402


def main() -> int:
    """Check every served model version against its goldens, or --write them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="store the current predictions")
    args = parser.parse_args()
    failed = False
    for model in served_models():
        if args.write:
            path = write_goldens(model)
            print(f"wrote {path.relative_to(REPO_ROOT)}")
            continue
        line = check(model)
        print(line or f"goldens {model.name} v{model.version}: ok")
        failed = failed or bool(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
