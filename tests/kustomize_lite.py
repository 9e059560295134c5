"""A small kustomize for the features deploy/k8s uses, for machines without kubectl.

kubectl (which embeds kustomize) is on this project's machine image but cannot be
installed from the registries the project may use (PyPI, Debian, npm: Debian's
kubernetes-client is 1.20, whose kustomize predates ``labels``). tests/test_deploy.py
renders with kubectl when it is there, and with this otherwise; when both are there a
test checks that they agree, so this stays faithful to the real thing.

Supported: ``resources`` (files and directories), ``labels`` (with includeSelectors),
``configMapGenerator`` with ``files`` (with kustomize's name hash left out),
``images`` (newName/newTag) and ``patches`` with a strategic-merge ``path``
(containers, ports, env and volumes merge by name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]
_MERGE_KEYS = {"containers": "name", "ports": "containerPort", "env": "name", "volumes": "name"}


def render(directory: Path) -> list[Object]:
    """The objects ``kubectl kustomize directory`` would print (without name hashes)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[Object] = []
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (directory / f).read_text() for f in generator.get("files", [])}
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}}
            | {"data": data}
        )
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for patch in kustomization.get("patches", []):
        (change,) = [d for d in yaml.safe_load_all((directory / patch["path"]).read_text()) if d]
        target = _find(objects, change["kind"], change["metadata"]["name"])
        _merge(target, change)
    for image in kustomization.get("images", []):
        _set_images(objects, image)
    for labels in kustomization.get("labels", []):
        for obj in objects:
            _add_labels(obj, labels["pairs"], labels.get("includeSelectors", False))
    return objects


def _find(objects: list[Object], kind: str, name: str) -> Object:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"patch target {kind}/{name} not found")


def _merge(into: Object, change: Object) -> None:
    """Strategic merge: maps merge, lists of named items merge by name, others replace."""
    for key, value in change.items():
        current = into.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value)
        elif key in _MERGE_KEYS and isinstance(value, list) and isinstance(current, list):
            merge_key = _MERGE_KEYS[key]
            by_key = {item[merge_key]: item for item in current}
            for item in value:
                if item[merge_key] in by_key:
                    _merge(by_key[item[merge_key]], item)
                else:
                    current.append(item)
        else:
            into[key] = value


def _set_images(objects: list[Object], image: Object) -> None:
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                new_name, tag = image.get("newName", name), image.get("newTag", tag)
                container["image"] = f"{new_name}:{tag}" if tag else new_name


def _add_labels(obj: Object, pairs: dict[str, str], selectors: bool) -> None:
    obj["metadata"].setdefault("labels", {}).update(pairs)
    if not selectors:
        return
    spec = obj.get("spec", {})
    if obj["kind"] == "Service":
        spec.setdefault("selector", {}).update(pairs)
    elif "template" in spec:
        spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
        spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
