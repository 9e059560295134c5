"""The model repository: ``<root>/<model>/<version>/manifest.json`` (+ weights) per version.

A version directory is named by a positive integer (``1``, ``2``, ...; "latest" is
the highest) and holds ``manifest.json``:

* ``model`` and ``class``: the registered model name and its class's name;
* ``version``: the directory's name;
* ``weights`` and ``sha256``: the weights file (next to the manifest) and its
  SHA-256, both null for a model without weights;
* ``settings``: the model settings this version needs (e.g. ``hidden_size``);
  ``checkpoint`` is never listed: it is always the version's weights file;
* ``input_schema`` / ``output_schema``: what ListModels reports for it, which must
  equal what the serving code describes (a changed preprocessing refuses the version);
* ``training``: the run that made it (seed, metrics, library versions).

Every check names the file at fault (:class:`VersionRefused`). The training scripts
write versions with :func:`write_version`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from commonlib.models.base import BaseModel, ModelSettings

MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
FORMAT = 1
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")


class VersionRefused(Exception):
    """A version that cannot serve: ``path`` is the file at fault."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class SettingsMismatch(VersionRefused):
    """The config sets ``setting`` to another value than the version's manifest."""

    def __init__(self, path: Path, message: str, setting: str) -> None:
        super().__init__(path, message)
        self.setting = setting


def is_version(name: str) -> bool:
    """Whether ``name`` is a valid version (a positive integer without leading zeros)."""
    return bool(_VERSION.match(name))


def version_sort_key(version: str) -> tuple[int, str]:
    """Versions order numerically (``10`` after ``9``)."""
    return (int(version), version) if version.isdigit() else (0, version)


@dataclass(frozen=True)
class Manifest:
    """One version's manifest, as read from ``path``."""

    path: Path
    model: str
    version: str
    class_name: str
    weights: Path | None
    sha256: str | None
    settings: Mapping[str, Any]
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)


def versions_on_disk(root: Path, model: str) -> list[str]:
    """The version directories of ``model`` holding a manifest, oldest first."""
    directory = root / model
    if not directory.is_dir():
        return []
    found = [
        entry.name
        for entry in directory.iterdir()
        if is_version(entry.name) and (entry / MANIFEST).is_file()
    ]
    return sorted(found, key=version_sort_key)


def has_repository(root: Path | None, model: str) -> bool:
    """Whether ``model`` has a directory in the repository at ``root``."""
    return root is not None and (root / model).is_dir()


def read_manifest(root: Path, model: str, version: str) -> Manifest:
    """The manifest of ``model`` version ``version``; VersionRefused naming the file."""
    path = root / model / version / MANIFEST
    if not is_version(version):
        raise VersionRefused(path.parent, "a version is a positive integer (e.g. 1, 2, 10)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VersionRefused(path, "no such file (the version is not in the repository)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VersionRefused(path, f"not a readable JSON manifest: {exc}") from None
    if not isinstance(data, dict):
        raise VersionRefused(path, "the manifest must be a JSON object")
    expected: dict[str, type | tuple[type, ...]] = {
        "model": str,
        "class": str,
        "version": str,
        "weights": (str, type(None)),
        "sha256": (str, type(None)),
        "settings": dict,
        "input_schema": dict,
        "output_schema": dict,
    }
    for key, kind in expected.items():
        if key not in data:
            raise VersionRefused(path, f"missing key '{key}'")
        if not isinstance(data[key], kind):
            raise VersionRefused(path, f"'{key}' has the wrong type ({type(data[key]).__name__})")
    if data["model"] != model:
        raise VersionRefused(path, f"'model' is '{data['model']}', not '{model}'")
    if data["version"] != version:
        raise VersionRefused(path, f"'version' is '{data['version']}', not '{version}'")
    if (data["weights"] is None) != (data["sha256"] is None):
        raise VersionRefused(path, "'weights' and 'sha256' must both be set or both be null")
    weights = data["weights"]
    if weights is not None and (Path(weights).name != weights or weights in ("", ".", "..")):
        raise VersionRefused(path, "'weights' must be a file name in the version directory")
    training = data.get("training", {})
    return Manifest(
        path=path,
        model=model,
        version=version,
        class_name=data["class"],
        weights=path.parent / weights if weights is not None else None,
        sha256=data["sha256"],
        settings=data["settings"],
        input_schema=data["input_schema"],
        output_schema=data["output_schema"],
        training=training if isinstance(training, dict) else {},
    )


def version_settings(
    manifest: Manifest, cls: type[BaseModel], base: Mapping[str, Any]
) -> ModelSettings:
    """The settings a version serves with: the manifest's, plus any other key of ``base``
    (the config's), with ``checkpoint`` set to its weights. VersionRefused naming the
    manifest when the class, the settings or the input/output schema do not match the
    serving code; SettingsMismatch when ``base`` sets a key to another value.
    """
    path = manifest.path
    if manifest.class_name != cls.__name__:
        raise VersionRefused(
            path, f"'class' is '{manifest.class_name}' but {cls.name} is served by {cls.__name__}"
        )
    if "checkpoint" in manifest.settings:
        raise VersionRefused(path, "'settings' must not set checkpoint (the weights are)")
    for key, value in manifest.settings.items():
        if key in base and base[key] != value:
            raise SettingsMismatch(
                path,
                f"settings.{key} is {value!r} here but the config sets {key}: {base[key]!r}; "
                "leave it unset to serve each version with its own",
                key,
            )
    merged = {k: v for k, v in base.items() if k != "checkpoint"}
    merged.update(manifest.settings)
    if manifest.weights is not None:
        merged["checkpoint"] = str(manifest.weights)
    try:
        settings = cls.parse_settings(merged)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise VersionRefused(path, f"settings do not fit {cls.name}: {problems}") from None
    instance = cls(settings)
    for key, found, served in (
        ("input_schema", manifest.input_schema, instance.describe_input()),
        ("output_schema", manifest.output_schema, instance.describe_output()),
    ):
        if _normalised(found) != _normalised(served):
            raise VersionRefused(
                path,
                f"'{key}' differs from what the serving code of {cls.name} describes "
                f"(manifest {json.dumps(found, sort_keys=True)[:300]}, "
                f"served {json.dumps(served, sort_keys=True)[:300]})",
            )
    return settings


def check_weights(manifest: Manifest) -> None:
    """VersionRefused naming the weights file if it is missing or its SHA-256 differs."""
    if manifest.weights is None:
        return
    try:
        digest = file_sha256(manifest.weights)
    except OSError as exc:
        raise VersionRefused(manifest.weights, f"cannot read the weights: {exc.strerror}") from None
    if digest != manifest.sha256:
        raise VersionRefused(
            manifest.weights,
            f"SHA-256 is {digest} but {manifest.path.name} says {manifest.sha256} "
            "(corrupt or replaced weights)",
        )


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalised(document: Any) -> Any:
    return json.loads(json.dumps(document, sort_keys=True))


def next_version(root: Path, model: str) -> str:
    """One above the highest version directory of ``model`` (``1`` for the first)."""
    directory = root / model
    taken = (
        [int(e.name) for e in directory.iterdir() if is_version(e.name)]
        if directory.is_dir()
        else []
    )
    return str(max(taken, default=0) + 1)


def write_version(
    root: Path,
    cls: type[BaseModel],
    settings: Mapping[str, Any],
    training: Mapping[str, Any],
    weights: Path | None = None,
    version: str | None = None,
) -> Path:
    """Place a new version of ``cls`` in the repository; the version directory.

    ``weights`` (a checkpoint file) is moved into it as ``weights.pt``. The manifest's
    schemas are what the serving code describes for ``settings``. An existing version
    directory is never overwritten (FileExistsError).
    """
    version = version or next_version(root, cls.name)
    if not is_version(version):
        raise ValueError(f"version '{version}' is not a positive integer")
    directory = root / cls.name / version
    directory.mkdir(parents=True, exist_ok=False)
    target = directory / WEIGHTS if weights is not None else None
    if weights is not None and target is not None:
        shutil.move(str(weights), target)
    instance = cls(
        {**settings, "checkpoint": str(target)} if target is not None else dict(settings)
    )
    manifest = {
        "format": FORMAT,
        "model": cls.name,
        "class": cls.__name__,
        "version": version,
        "weights": WEIGHTS if target is not None else None,
        "sha256": file_sha256(target) if target is not None else None,
        "settings": dict(settings),
        "input_schema": instance.describe_input(),
        "output_schema": instance.describe_output(),
        "training": dict(training),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return directory
