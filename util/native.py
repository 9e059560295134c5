"""The C extensions (factory/_fastcodec.c, netlib/_fastudp.c, commonlib/models/_lstmkernel.c).

They are used when built and allowed. ``scripts/build_native.py`` (``make native``)
builds them in place; each module that has one keeps a twin: pure Python giving the
same bytes for the codec and the UDP snapshots, TorchScript agreeing to float32
rounding for the LSTM kernel. ``INFERENCE_PURE_PYTHON=1`` in the environment makes
every one of them stand aside.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

PURE_PYTHON_ENV = "INFERENCE_PURE_PYTHON"


def native_module(name: str) -> ModuleType | None:
    """The built extension ``name`` (e.g. ``factory._fastcodec``), or None for the Python twin.

    None when it is not built, when INFERENCE_PURE_PYTHON is set (to anything but 0),
    or on a big-endian host (the extensions read and write little-endian bytes).
    """
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0") or sys.byteorder != "little":
        return None
    try:
        return importlib.import_module(name)
    except ImportError:  # not built: the pure-Python path
        return None
