"""Trained-weight checkpoints of the torch models: where they live, reading and writing them.

A checkpoint is ``torch.save({"state_dict": ..., "meta": {...}})``: the module's
tensors and a JSON-able dict describing the run that made them. The training scripts
write them with :func:`save_checkpoint`; the models read them with
:func:`read_checkpoint` (tensors only: ``weights_only=True``) and check their width
with :func:`check_hidden_size`.
"""

from __future__ import annotations

import commonlib.torch_env  # noqa: F401 - sets OMP_NUM_THREADS; must run before torch loads

# isort: split

import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from commonlib.models.base import SettingsError

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root; relative checkpoint paths are resolved against it."""


def resolve_checkpoint(setting: object, default: Path) -> Path:
    """The checkpoint path of a ``checkpoint`` setting (``None``: ``default``)."""
    path = Path(str(setting)) if setting is not None else default
    return path if path.is_absolute() else REPO_ROOT / path


def read_checkpoint(
    path: Path, model: str, make_target: str, device: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` of the checkpoint at ``path``, its tensors on ``device``.

    SettingsError on the ``checkpoint`` setting if there is no file (naming
    ``make <make_target>``), it cannot be read, or it holds no state dict.
    """
    if not path.is_file():
        raise SettingsError(
            "checkpoint",
            f"{model} checkpoint {path} not found; run `make {make_target}` to create it",
        )
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise SettingsError(
            "checkpoint", f"{path} is not a readable {model} checkpoint: {exc}"
        ) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise SettingsError("checkpoint", f"{path} is not a {model} checkpoint (no state_dict)")
    state_dict = cast(dict[str, torch.Tensor], checkpoint["state_dict"])
    return state_dict, cast(dict[str, Any], checkpoint.get("meta", {}))


def check_hidden_size(path: Path, model: str, script: str, found: int, expected: int) -> None:
    """SettingsError on ``hidden_size`` if the checkpoint's hidden size is not the setting's."""
    if found != expected:
        raise SettingsError(
            "hidden_size",
            f"checkpoint {path} has hidden size {found} but the {model} hidden_size "
            f"setting is {expected}; retrain with `{script} --hidden-size {expected}` "
            f"or set hidden_size: {found}",
        )


def save_checkpoint(net: nn.Module, meta: dict[str, Any], out: str | Path) -> Path:
    """Write ``net``'s tensors and ``meta`` to ``out`` (relative: from the working directory)."""
    state_dict = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    path = Path(out)
    if not path.is_absolute():
        path = Path.cwd() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state_dict, "meta": meta}, path)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")
    return path


def place_version(
    net: nn.Module,
    meta: dict[str, Any],
    model: str,
    repository: str | Path,
    version: str | None,
    settings: dict[str, Any],
) -> Path:
    """Save ``net`` as a new version of ``model`` in ``repository`` (the training scripts).

    The checkpoint is written next to the version directory first, then moved in with
    its manifest (commonlib.models.repository.write_version); the version directory.
    """
    from commonlib.models.registry import model_factory
    from commonlib.models.repository import write_version

    root = Path(repository)
    if not root.is_absolute():
        root = Path.cwd() / root
    staged = save_checkpoint(net, meta, root / model / f".staged-{os.getpid()}.pt")
    directory = write_version(root, model_factory.get(model), settings, meta, staged, version)
    print(f"placed {model} version {directory.name} in {directory}")
    return directory
