"""``python -m bot SCENARIO [options]``: load, stress, soak, failover, concurrency.

See ``python -m bot --help``, bot/main.py and docs/bot.md.
"""

from __future__ import annotations

import sys

from bot.main import main

if __name__ == "__main__":
    sys.exit(main())
