"""Docker images (hadolint + structure) and Kubernetes manifests (kustomize + schema validation)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scripts import build_native
from tests import kustomize_lite
from util.config import Config, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    hadolint = shutil.which("hadolint") or str(
        Path(__import__("sys").executable).parent / "hadolint"
    )
    result = subprocess.run(
        [hadolint, str(ROOT / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_non_root_with_a_healthcheck_and_only_what_runs(name: str) -> None:
    text = (ROOT / name).read_text()
    assert "USER 10001" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "EXPOSE 7600/tcp 9100/tcp" in text
    assert "requirements-runtime.txt" in text and "COPY tests" not in text
    copied = [
        line.split()[1]
        for line in text.splitlines()
        if line.startswith("COPY ") and not line.startswith("COPY --from=")
    ]
    for source in copied:
        assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["python", "-m", "aiServer"]' in text


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_builds_every_c_module_in_a_stage_the_image_copies(name: str) -> None:
    """The image runs the C hot paths: a build stage compiles every source or fails."""
    text = (ROOT / name).read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) == 2, "a build stage, then the image"
    build, image = stages
    assert build.split()[2] == "native"  # FROM <base> AS native
    assert "scripts/build_native.py --require" in build
    for source in build_native.SOURCES:
        relative = source.relative_to(ROOT)
        assert re.search(rf"^COPY {re.escape(str(relative))} ", build, re.MULTILINE), relative
    assert "COPY --from=native /src/ ./" in image
    assert "gcc" not in image, "no compiler in the image that runs"


def test_build_native_require_fails_without_a_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without gcc, make native leaves pure Python (0); the images' --require fails (1)."""
    source = tmp_path / "_fastcodec.c"
    source.write_text((ROOT / "factory" / "_fastcodec.c").read_text())
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc on it
    assert build_native.build(source) == 0
    assert build_native.build(source, require=True) == 1
    assert "--require: failing" in capsys.readouterr().err
    assert not build_native.target(source).exists()


def test_container_config_is_valid_and_listens_on_all_interfaces() -> None:
    config = load_config(ROOT / "config" / "container.yaml")
    assert config.server.host == "0.0.0.0" and config.http.host == "0.0.0.0"
    k8s_copy = ROOT / "deploy" / "k8s" / "base" / "config.yaml"
    assert k8s_copy.read_text() == (ROOT / "config" / "container.yaml").read_text()


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` the overlay; tests/kustomize_lite.py where kubectl is missing."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # on the machine image, but not installable from PyPI/Debian/npm
        return kustomize_lite.render(ROOT / "deploy" / "k8s" / "overlays" / overlay)
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlay_renders_and_every_object_validates(overlay: str) -> None:
    objects = render(overlay)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service"]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.32.0", strict=True)
    by_kind = {o["kind"]: o for o in objects}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    config = parse_config(yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yaml"]))
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + config.server.drain_timeout_s
    assert config.server.drain_timeout_s == Config().server.drain_timeout_s
    ports = {p["containerPort"] for p in container["ports"]}
    assert ports == {Config().server.tcp_port, Config().http.port}
    service_ports = {p["port"] for p in by_kind["Service"]["spec"]["ports"]}
    assert service_ports == ports
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["args"] == ["--config", f"{mount}/config.yaml"]
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") == (overlay == "gpu")
    assert container["image"] == f"inferenceserver:{'cuda' if overlay == 'gpu' else 'cpu'}"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_fallback_renderer_agrees_with_kubectl(overlay: str) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on this machine: nothing to compare the fallback with")

    def normalised(objects: list[dict[str, Any]]) -> list[str]:
        text = yaml.safe_dump_all(sorted(objects, key=lambda o: o["kind"]), sort_keys=True)
        # kustomize suffixes generated ConfigMap names with a content hash
        return [re.sub(r"inferenceserver-config-[a-z0-9]{10}", "inferenceserver-config", text)]

    lite = kustomize_lite.render(ROOT / "deploy" / "k8s" / "overlays" / overlay)
    assert normalised(lite) == normalised(render(overlay))
