"""Model repository and versions: policies, routing, admin commands, refusals, A/B, streams.

In memory (tests/support.py): the real facade, batcher, dispatcher and protocol on a
task.Clock, with batches run when the test says. Each test gets its own repository
copied from the shipped one (models/), plus the extra versions it needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aiServer.model_versions import RELEASE_POLL_S, loader_key
from aiServer.startup import StartupError, startup_cause
from commonlib.models.checkpoint import place_version
from commonlib.models.lstm_timeseries import LstmForecaster
from commonlib.models.repository import MANIFEST, file_sha256
from commonlib.wire import pb
from factory.tick_codec import encode_tick, unpack_rows
from tests.support import ROOT, App, Client, infer, make_app
from util.config import ConfigError
from util.errors import ErrorCode

LSTM = "lstm_timeseries"
MA = "moving_average"
SERIES = [float(i % 7) for i in range(24)]


def make_repository(tmp_path: Path) -> Path:
    """A copy of the shipped repository (every model at version 1)."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "models", root)
    return root


def add_version(root: Path, model: str, version: str, scale_head: float | None = None) -> Path:
    """Version ``version`` of ``model``: a copy of version 1, its head weights scaled by
    ``scale_head`` when given (so its outputs differ), with a matching manifest."""
    directory = root / model / version
    shutil.copytree(root / model / "1", directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["version"] = version
    if scale_head is not None:
        weights = directory / "weights.pt"
        checkpoint = torch.load(weights, weights_only=True)
        checkpoint["state_dict"]["head.weight"] *= scale_head
        torch.save(checkpoint, weights)
        manifest["sha256"] = file_sha256(weights)
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def app_on(root: Path, **models: dict[str, Any]) -> App:
    return make_app({"inference": {"repository": str(root), "models": models}})


def admin(
    client: Client, action: int, model: str, version: str = "", request_id: int = 900
) -> None:
    envelope = pb.Envelope(request_id=request_id)
    envelope.model_admin.action = action  # type: ignore[assignment]
    envelope.model_admin.model = model
    envelope.model_admin.version = version
    client.send(envelope)


def ask(app: App, client: Client, request_id: int, model: str, version: str = "") -> pb.Envelope:
    envelope = infer(request_id, model, SERIES)
    envelope.infer_request.version = version
    client.send(envelope)
    app.settle()
    (reply,) = client.replies()
    return reply


def run_admin(app: App, client: Client, action: int, model: str, version: str = "") -> pb.Envelope:
    admin(client, action, model, version)
    app.settle()
    (reply,) = client.replies()
    return reply


# -- repository and policies ----------------------------------------------------------------
def test_all_policy_serves_and_lists_every_version_and_requests_pick_one(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    add_version(root, MA, "2")
    add_version(root, MA, "10")
    app = app_on(root, moving_average={"versions": "all"})
    client = app.connect()
    client.send(pb.Envelope(request_id=1, list_models=pb.ListModels()))
    (listing,) = client.replies()
    versions = [m.version for m in listing.model_list.models if m.name == MA]
    assert versions == ["1", "2", "10"]  # numeric order, every served version
    assert ask(app, client, 2, MA).infer_response.version == "10"  # the highest by default
    assert ask(app, client, 3, MA, "2").infer_response.version == "2"
    unknown = ask(app, client, 4, MA, "7")
    assert unknown.error.code == ErrorCode.UNKNOWN_MODEL
    assert unknown.error.message == "model 'moving_average' has no version '7' (serving 1, 2, 10)"
    models = {(d.name, d.version): d for d in app.facade.describe_models()}
    assert models[(MA, "10")].default and not models[(MA, "1")].default


def test_latest_and_pinned_policies(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    add_version(root, MA, "2")
    latest = app_on(root)
    assert [d.version for d in latest.facade.describe_models() if d.name == MA] == ["2"]
    pinned = app_on(root, moving_average={"versions": {"pinned": [1]}})
    assert [d.version for d in pinned.facade.describe_models() if d.name == MA] == ["1"]
    with pytest.raises(ConfigError) as missing:
        app_on(root, moving_average={"versions": {"pinned": [1, 3]}})
    assert missing.value.path == "inference.models.moving_average.versions.pinned"
    assert "pinned version(s) 3 not found (available: 1, 2)" in str(missing.value)


def test_traffic_naming_a_version_not_served_is_a_config_error(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    add_version(root, MA, "2")
    with pytest.raises(ConfigError) as error:
        app_on(root, moving_average={"traffic": {1: 90, 2: 10}})  # latest serves 2 only
    assert error.value.path == "inference.models.moving_average.traffic"


def test_a_mismatched_manifest_is_refused_at_start_naming_it(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    manifest_path = root / MA / "1" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["input_schema"]["input"]["max_length"] = 10
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError) as error:
        app_on(root)
    assert f"{manifest_path}: 'input_schema' differs from what the serving code" in str(error.value)


# -- admin commands -------------------------------------------------------------------------
def test_load_then_unload_swaps_the_version_requests_get(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    app = app_on(root)
    client = app.connect()
    assert ask(app, client, 1, LSTM).infer_response.version == "1"
    add_version(root, LSTM, "2", scale_head=0.5)
    loaded = run_admin(app, client, pb.ADMIN_ACTION_LOAD, LSTM)  # empty: the newest on disk
    result = loaded.model_admin_result
    assert (list(result.versions), result.default_version, result.message) == (
        ["1", "2"],
        "2",
        "loaded 2",
    )
    new = ask(app, client, 2, LSTM).infer_response
    old = ask(app, client, 3, LSTM, "1").infer_response
    assert (new.version, old.version) == ("2", "1")
    assert new.predictions != old.predictions  # a different model answered
    unloaded = run_admin(app, client, pb.ADMIN_ACTION_UNLOAD, LSTM, "1").model_admin_result
    assert (list(unloaded.versions), unloaded.default_version) == (["2"], "2")
    assert ask(app, client, 4, LSTM, "1").error.code == ErrorCode.UNKNOWN_MODEL
    last = run_admin(app, client, pb.ADMIN_ACTION_UNLOAD, LSTM, "2")
    assert last.error.code == ErrorCode.INVALID_INPUT
    assert "the only version" in last.error.message
    app.clock.advance(RELEASE_POLL_S)
    assert app.facade.loader.cache_info().loaded_models.count(loader_key(LSTM, "1")) == 0


def test_reload_applies_the_policy_to_what_the_repository_holds(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    app = app_on(root)
    client = app.connect()
    add_version(root, MA, "2")
    reply = run_admin(app, client, pb.ADMIN_ACTION_RELOAD, MA).model_admin_result
    assert (list(reply.versions), reply.message) == (["2"], "loaded 2; unloaded 1")
    again = run_admin(app, client, pb.ADMIN_ACTION_RELOAD, MA).model_admin_result
    assert again.message == "nothing to change"


def test_requests_queued_for_an_unloaded_version_are_answered_by_it(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    add_version(root, LSTM, "2")
    app = app_on(root, lstm_timeseries={"versions": "all"})
    client = app.connect()
    app.facade.warm_up()
    app.settle()
    for request_id in range(1, 6):
        envelope = infer(request_id, LSTM, SERIES)
        envelope.infer_request.version = "1"
        client.send(envelope)
    admin(client, pb.ADMIN_ACTION_UNLOAD, LSTM, "1")  # before the queued batch runs
    assert app.facade.loader.is_loaded(loader_key(LSTM, "1"))
    app.settle()
    replies = client.replies()
    answers = [r.infer_response.version for r in replies if r.HasField("infer_response")]
    assert answers == ["1"] * 5
    assert [list(r.model_admin_result.versions) for r in replies if r.request_id == 900] == [["2"]]
    app.clock.advance(RELEASE_POLL_S)
    assert not app.facade.loader.is_loaded(loader_key(LSTM, "1"))  # freed once idle


@pytest.mark.parametrize("corruption", ["checksum", "schema", "settings", "manifest"])
def test_a_corrupt_version_is_refused_naming_the_file_and_the_old_one_serves(
    tmp_path: Path, corruption: str
) -> None:
    root = make_repository(tmp_path)
    app = app_on(root)
    client = app.connect()
    directory = add_version(root, LSTM, "2")
    manifest_path = directory / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    if corruption == "checksum":
        with (directory / "weights.pt").open("r+b") as f:
            f.seek(200)
            f.write(b"\x00\x01\x02\x03")
        named = directory / "weights.pt"
    elif corruption == "schema":
        manifest["output_schema"]["description"] = "something else"
        named = manifest_path
    elif corruption == "settings":
        manifest["settings"]["hidden_size"] = 32  # the weights are 64 wide
        manifest["input_schema"]["config"]["hidden_size"].update(default=32, enum=[32])
        named = directory / "weights.pt"
    else:
        manifest_path.write_text("{not json")
        named = manifest_path
    if corruption != "manifest":
        manifest_path.write_text(json.dumps(manifest))
    refused = run_admin(app, client, pb.ADMIN_ACTION_LOAD, LSTM, "2")
    assert refused.error.code == ErrorCode.VERSION_REFUSED
    assert refused.error.message.startswith(f"{named}: "), refused.error.message
    assert ask(app, client, 2, LSTM).infer_response.version == "1"
    assert [d.version for d in app.facade.describe_models() if d.name == LSTM] == ["1"]


def test_admin_needs_authentication_when_auth_is_on_and_can_be_disabled(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    app = make_app({"inference": {"repository": str(root)}, "auth": {"tokens": ["secret"]}})
    client = app.connect()
    refused = run_admin(app, client, pb.ADMIN_ACTION_RELOAD, MA)
    assert refused.error.code == ErrorCode.UNAUTHENTICATED
    client.send(pb.Envelope(request_id=1, hello=pb.Hello(token="secret")))
    client.replies()
    assert run_admin(app, client, pb.ADMIN_ACTION_RELOAD, MA).HasField("model_admin_result")
    disabled = make_app({"inference": {"repository": str(root)}, "admin": {"enabled": False}})
    other = disabled.connect()
    denied = run_admin(disabled, other, pb.ADMIN_ACTION_RELOAD, MA)
    assert denied.error.code == ErrorCode.PERMISSION_DENIED


def test_a_model_served_from_a_checkpoint_setting_is_not_managed(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    checkpoint = str(root / LSTM / "1" / "weights.pt")
    app = app_on(root, lstm_timeseries={"settings": {"checkpoint": checkpoint}})
    client = app.connect()
    assert ask(app, client, 1, LSTM).infer_response.version == "1"
    refused = run_admin(app, client, pb.ADMIN_ACTION_LOAD, LSTM)
    assert refused.error.code == ErrorCode.INVALID_INPUT
    assert "not served from the repository" in refused.error.message


# -- A/B ------------------------------------------------------------------------------------
def test_traffic_splits_by_connection_and_stays_sticky(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    add_version(root, MA, "2")
    app = app_on(root, moving_average={"versions": "all", "traffic": {1: 50, 2: 50}})
    seen = []
    for _ in range(40):
        client = app.connect()
        versions = {ask(app, client, i, MA).infer_response.version for i in range(1, 4)}
        assert len(versions) == 1  # sticky: one connection, one version
        seen.append(versions.pop())
        assert ask(app, client, 9, MA, "1").infer_response.version == "1"  # named: as asked
    assert 8 <= seen.count("1") <= 32 and 8 <= seen.count("2") <= 32
    answers = {(m, v): n for m, v, n in app.facade.version_answers()}
    assert answers[(MA, "1")] == 3 * seen.count("1") + 40
    assert answers[(MA, "2")] == 3 * seen.count("2")


def test_a_canary_weight_of_zero_takes_no_traffic(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    add_version(root, MA, "2")
    app = app_on(root, moving_average={"versions": "all", "traffic": {1: 100, 2: 0}})
    for _ in range(20):
        assert ask(app, app.connect(), 1, MA).infer_response.version == "1"


# -- streams --------------------------------------------------------------------------------
def open_stream(client: Client, character_id: int, version: str = "") -> None:
    envelope = pb.Envelope(request_id=character_id)
    envelope.stream_open.model = LSTM
    envelope.stream_open.character_id = character_id
    envelope.stream_open.version = version
    client.send(envelope)


def step_once(app: App, client: Client, ids: list[int], value: float) -> dict[int, list[float]]:
    """One tick with ``value`` for each of ``ids``: each one's forecasts."""
    rows = np.full((len(ids), 1), value, dtype=np.float32)
    client.send(pb.Envelope(request_id=77, tick=encode_tick(LSTM, ids, rows, 1, 1000)))
    app.clock.advance(1 / 60 * 1.001)
    app.runner.run_pending()
    out: dict[int, list[float]] = {}
    for reply in client.replies():
        if reply.HasField("tick_result"):
            result = reply.tick_result
            outputs = unpack_rows(result.outputs, result.output_width)
            ids_here = np.frombuffer(result.ids, dtype="<u4").tolist()
            for cid, row in zip(ids_here, outputs, strict=True):
                out[cid] = row.tolist()
    return out


def test_open_streams_stay_on_their_version_through_a_swap(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    app = app_on(root)
    client = app.connect()
    open_stream(client, 1)
    assert client.replies()[0].stream_opened.version == "1"
    add_version(root, LSTM, "2", scale_head=0.5)
    assert run_admin(app, client, pb.ADMIN_ACTION_LOAD, LSTM).HasField("model_admin_result")
    unloaded = run_admin(app, client, pb.ADMIN_ACTION_UNLOAD, LSTM, "1")
    assert list(unloaded.model_admin_result.versions) == ["2"]
    open_stream(client, 2)
    assert client.replies()[0].stream_opened.version == "2"
    # Both start from the zero state: the same observation, each its own version's answer.
    outputs = step_once(app, client, [1, 2], 3.0)
    assert outputs[1] != outputs[2]
    reference = app_on(make_repository(tmp_path / "ref"))
    ref_client = reference.connect()
    open_stream(ref_client, 1)
    ref_client.replies()
    assert step_once(reference, ref_client, [1], 3.0)[1] == outputs[1]  # v1's answer
    # Version 1 stays loaded while its stream is open, and is freed once it closes.
    app.clock.advance(RELEASE_POLL_S)
    assert loader_key(LSTM, "1") in app.facade.loader.cache_info().loaded_models
    client.send(pb.Envelope(request_id=5, stream_close=pb.StreamClose(character_id=1)))
    app.clock.advance(RELEASE_POLL_S)
    assert loader_key(LSTM, "1") not in app.facade.loader.cache_info().loaded_models


def test_streams_split_per_stream_and_a_named_version_is_kept(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    add_version(root, LSTM, "2")
    app = app_on(root, lstm_timeseries={"versions": "all", "traffic": {1: 50, 2: 50}})
    client = app.connect()
    for cid in range(1, 41):
        open_stream(client, cid)
    versions = [r.stream_opened.version for r in client.replies()]
    assert 8 <= versions.count("1") <= 32 and 8 <= versions.count("2") <= 32
    open_stream(client, 99, "2")
    assert client.replies()[0].stream_opened.version == "2"


def test_a_placed_training_result_serves_with_its_manifest_settings(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    app = app_on(root)
    client = app.connect()
    torch.manual_seed(0)
    directory = place_version(
        LstmForecaster(16), {"seed": 0, "val_loss": 1.5}, LSTM, root, None, {"hidden_size": 16}
    )
    assert directory == root / LSTM / "2"
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["sha256"] == file_sha256(directory / "weights.pt")
    assert manifest["training"] == {"seed": 0, "val_loss": 1.5}
    assert not list((root / LSTM).glob(".staged-*"))  # the staged checkpoint was moved in
    loaded = run_admin(app, client, pb.ADMIN_ACTION_LOAD, LSTM).model_admin_result
    assert loaded.message == "loaded 2"
    envelope = infer(1, LSTM, SERIES, hidden_size=16)  # version 2 is 16 wide
    client.send(envelope)
    app.settle()
    (reply,) = client.replies()
    assert reply.infer_response.version == "2", reply
    old = infer(2, LSTM, SERIES, hidden_size=64)
    old.infer_request.version = "1"
    client.send(old)
    app.settle()
    assert client.replies()[0].infer_response.version == "1"


@pytest.mark.parametrize("corruption", ["checksum", "settings"])
def test_a_version_that_cannot_load_at_start_fails_naming_the_file(
    tmp_path: Path, corruption: str
) -> None:
    root = make_repository(tmp_path)
    weights = root / LSTM / "1" / "weights.pt"
    if corruption == "checksum":
        weights.write_bytes(weights.read_bytes()[:-4])
        expected = f"inference.models.lstm_timeseries: {weights}: SHA-256 is "
    else:
        manifest_path = root / LSTM / "1" / MANIFEST
        manifest = json.loads(manifest_path.read_text())
        manifest["settings"]["hidden_size"] = 32
        manifest["input_schema"]["config"]["hidden_size"].update(default=32, enum=[32])
        manifest_path.write_text(json.dumps(manifest))
        expected = f"inference.models.lstm_timeseries: {weights}: checkpoint {weights} has hidden"
    app = app_on(root)
    failures: list[Any] = []
    app.facade.warm_up().addErrback(failures.append)
    app.settle()
    (failure,) = failures
    assert isinstance(startup_cause(failure), StartupError)
    assert str(startup_cause(failure)).startswith(expected), str(startup_cause(failure))
