"""Choose where models run: CUDA when asked for (or 'auto') and present, else the CPU."""

from __future__ import annotations

from typing import Literal

from twisted.logger import Logger

log = Logger()


def cuda_available() -> bool:
    """Whether torch sees a usable CUDA device (False when torch or a GPU is absent)."""
    try:
        import torch

        import commonlib.torch_env  # noqa: F401 - sets OMP_NUM_THREADS before torch loads
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(setting: Literal["auto", "cpu", "cuda"]) -> str:
    """'cpu' or 'cuda' for the inference.device setting; a missing GPU falls back to the CPU."""
    if setting == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if setting == "cuda":
        log.warn("inference.device is 'cuda' but no CUDA device is available; using the CPU")
    return "cpu"
