"""Configuration: defaults match config/default.yaml; bad keys and values are named."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from aiServer.__main__ import apply_process_settings
from aiServer.facade import batch_policy
from util.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    PinnedVersions,
    load_config,
    parse_config,
)


def test_default_yaml_lists_every_setting_with_its_default() -> None:
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    assert data == Config().model_dump(mode="json")
    assert load_config() == Config()


def _config_reference() -> ModuleType:
    path = DEFAULT_CONFIG_PATH.parents[1] / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_in_default_yaml_has_a_comment_line() -> None:
    """Each leaf setting (outside the per-model entries) is preceded by a comment."""
    undocumented = [key for key, _, doc in _config_reference().rows(DEFAULT_CONFIG_PATH) if not doc]
    assert undocumented == []


@pytest.mark.parametrize(
    ("yaml_text", "key", "problem"),
    [
        ("server:\n  tcp_prot: 1\n", "server.tcp_prot", "unknown key"),
        ("server:\n  tcp_port: 70000\n", "server.tcp_port", "less than or equal to 65535"),
        (
            "inference:\n  batching:\n    max_batch_size: 0\n",
            "inference.batching.max_batch_size",
            "greater than",
        ),
        (
            "inference:\n  batching:\n    max_wait_ms: fast\n",
            "inference.batching.max_wait_ms",
            "number",
        ),
        ("inference:\n  device: tpu\n", "inference.device", "'auto', 'cpu' or 'cuda'"),
        ("udp:\n  targets: [{host: 1.2.3.4}]\n", "udp.targets.0.port", "Field required"),
        ("logging:\n  level: loud\n", "logging.level", "Input should be"),
        ("server:\n  workers: 2\nudp:\n  bind_port: 7000\n", "udp.bind_port", "must be 0 when"),
        (
            "inference:\n  gil_switch_interval_ms: 0\n",
            "inference.gil_switch_interval_ms",
            "greater than or equal to 0.05",
        ),
        (
            "inference:\n  batching:\n    max_queue: 16\n",
            "inference.batching.max_queue",
            "less than moving_average's max_batch_size 64",
        ),
        (
            "inference:\n  models:\n    lstm_timeseries:\n      batching:\n"
            "        max_batch_size: 128\n        max_queue: 100\n",
            "inference.models.lstm_timeseries.batching.max_queue",
            "a batch could never fill",
        ),
        ("cache:\n  max_entries: 0\n", "cache.max_entries", "greater than or equal to 1"),
        (
            "inference:\n  models:\n    moving_average:\n      cache_ttl_s: -1\n",
            "inference.models.moving_average.cache_ttl_s",
            "greater than or equal to 0",
        ),
        ("cache:\n  redis_url: redis://h\n", "cache.redis_url", "cache.enabled is false"),
        (
            "cache:\n  enabled: true\n  redis_url: http://h:6379\n",
            "cache.redis_url",
            "must be a redis://, rediss:// or unix:// URL",
        ),
        (
            "cache:\n  enabled: true\n  redis_url: redis://h:6379/abc\n",
            "cache.redis_url",
            "the database must be a number",
        ),
        (
            "cache:\n  enabled: true\n  redis_url: redis://h:70000\n",
            "cache.redis_url",
            "Port out of range",
        ),
        (
            "inference:\n  models:\n    moving_average:\n      versions: newest\n",
            "inference.models.moving_average.versions",
            "must be latest, all or {pinned: [versions]}",
        ),
        (
            "inference:\n  models:\n    moving_average:\n      versions: {pinned: [1, 0]}\n",
            "inference.models.moving_average.versions",
            "'0' is not a version (a positive integer",
        ),
        (
            "inference:\n  models:\n    moving_average:\n      traffic: {1: 0, 2: 0}\n",
            "inference.models.moving_average.traffic",
            "every weight is 0",
        ),
        (
            "admin:\n  http_allowed_cidrs: [localhost]\n",
            "admin.http_allowed_cidrs.0",
            "not a network in CIDR form",
        ),
    ],
)
def test_errors_name_the_key_and_the_problem(
    tmp_path: Path, yaml_text: str, key: str, problem: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{key}: " in str(info.value)
    assert problem in str(info.value)
    assert info.value.path == key


def test_unreadable_and_non_mapping_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("server: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_version_policies_read_from_yaml_survive_a_dump_and_reparse(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "inference:\n  models:\n    moving_average:\n"
        "      versions: {pinned: [2, '10']}\n      traffic: {2: 90, '10': 10}\n"
    )
    config = load_config(path)
    ma = config.inference.models["moving_average"]
    assert isinstance(ma.versions, PinnedVersions) and ma.versions.pinned == ["2", "10"]
    assert ma.traffic == {"2": 90, "10": 10}
    assert parse_config(config.model_dump()) == config


def test_seed_wait_of_two_seconds_and_per_model_overrides() -> None:
    config = parse_config(
        {
            "inference": {
                "batching": {"max_wait_ms": 2000.0, "max_batch_size": 8},
                "models": {"moving_average": {"batching": {"max_batch_size": 32}}},
            }
        }
    )
    ma = config.inference.models["moving_average"].batching.model_dump()
    policy = batch_policy(config.inference.batching, ma)
    assert policy.max_wait_s == 2.0
    assert policy.max_batch_size == 32


def test_the_gil_switch_interval_is_applied_to_the_process() -> None:
    before = sys.getswitchinterval()
    try:
        apply_process_settings(parse_config({"inference": {"gil_switch_interval_ms": 0.5}}))
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        apply_process_settings(parse_config({}))
        assert sys.getswitchinterval() == pytest.approx(0.005)  # the default is Python's
    finally:
        sys.setswitchinterval(before)


def test_operations_doc_lists_every_key() -> None:
    doc = (DEFAULT_CONFIG_PATH.parents[1] / "docs" / "operations.md").read_text()
    rows = _config_reference().rows(DEFAULT_CONFIG_PATH)
    assert len(rows) > 40
    assert [key for key, _, _ in rows if f"`{key}`" not in doc] == []
