"""The C hot path (factory/_fastcodec.c) against the pure-Python path it stands in for."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from commonlib.wire import pb
from factory import codec, fastcodec
from factory.client_codec import frame_envelope
from tests.support import make_app

native: Any = pytest.importorskip("factory._fastcodec", reason="the C extension is not built")

float32s = st.floats(width=32, allow_nan=False)
config_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda v: pb.ConfigValue(int_value=v)),
    st.floats(allow_nan=False).map(lambda v: pb.ConfigValue(float_value=v)),
    st.booleans().map(lambda v: pb.ConfigValue(bool_value=v)),
    st.text(max_size=4).map(lambda v: pb.ConfigValue(string_value=v)),
    st.just(pb.ConfigValue()),
)
config_keys = st.sampled_from(["window_size", "forecast_steps", "include_trend", "other", ""])
small_ints = st.integers(0, 12).map(lambda v: pb.ConfigValue(int_value=v))
ma_configs = st.dictionaries(
    st.sampled_from(["window_size", "forecast_steps"]), small_ints, max_size=2
) | st.dictionaries(config_keys, config_values, max_size=3)


@st.composite
def infer_envelopes(draw: st.DrawFn, models: st.SearchStrategy[str]) -> pb.Envelope:
    envelope = pb.Envelope(request_id=draw(st.integers(0, 2**64 - 1)))
    request = envelope.infer_request
    request.model = draw(models)
    request.version = draw(st.sampled_from(["", "1", "2"]))
    values = draw(st.lists(float32s, max_size=12))
    how = draw(st.sampled_from(["values", "raw", "raw_odd", "both", "none"]))
    if how in ("values", "both"):
        request.input.values.extend(values)
    if how in ("raw", "both"):
        request.input.raw_values = np.array(values, dtype="<f4").tobytes()
    if how == "raw_odd":
        request.input.raw_values = b"\x00\x00\x80?\x00"
    request.input.shape.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=3)))
    for key, value in draw(ma_configs).items():
        request.config[key].CopyFrom(value)
    return envelope


@st.composite
def valid_ma_envelopes(draw: st.DrawFn) -> pb.Envelope:
    """Requests moving_average serves (a window of 1-5 and a series at least that long)."""
    envelope = pb.Envelope(request_id=draw(st.integers(0, 2**20)))
    request = envelope.infer_request
    request.model = "moving_average"
    values = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=5, max_size=12))
    if draw(st.booleans()):
        request.input.raw_values = np.array(values, dtype="<f4").tobytes()
    else:
        request.input.values.extend(values)
    if draw(st.booleans()):
        request.input.shape.append(len(values))
    for key, value in draw(
        st.fixed_dictionaries(
            {},
            optional={
                "window_size": st.integers(1, 5).map(lambda v: pb.ConfigValue(int_value=v)),
                "forecast_steps": st.integers(1, 8).map(lambda v: pb.ConfigValue(int_value=v)),
                "include_trend": st.booleans().map(lambda v: pb.ConfigValue(bool_value=v)),
            },
        )
    ).items():
        request.config[key].CopyFrom(value)
    return envelope


@settings(max_examples=300, deadline=None)
@given(infer_envelopes(st.text(max_size=8)), st.data())
def test_a_frame_the_c_parser_takes_is_one_protobuf_decodes_the_same(
    envelope: pb.Envelope, data: st.DataObject
) -> None:
    payload = envelope.SerializeToString()
    if data.draw(st.booleans()):  # damage it: a byte changed, cut, or inserted
        at = data.draw(st.integers(0, len(payload)))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        byte = bytes([data.draw(st.integers(0, 255))])
        if kind == "flip" and at < len(payload):
            payload = payload[:at] + byte + payload[at + 1 :]
        elif kind == "cut":
            payload = payload[:at]
        else:
            payload = payload[:at] + byte + payload[at:]
    parsed = native.parse_infer(payload)
    if parsed is None:
        return
    decoded = codec.decode_envelope(payload)  # must not raise
    request = decoded.infer_request
    assert decoded.WhichOneof("body") == "infer_request"
    request_id, model, version, values, shape, config = parsed
    assert (request_id, model, version) == (decoded.request_id, request.model, request.version)
    tensor = request.input
    assert not (len(tensor.values) and tensor.raw_values)
    expected = tensor.raw_values or np.array(tensor.values, dtype="<f4").tobytes()
    assert values == expected and shape == tuple(tensor.shape)
    assert pb.InferRequest.FromString(config).config == request.config


def test_the_canonical_frames_take_the_fast_path() -> None:
    envelope = pb.Envelope(request_id=9)
    envelope.infer_request.model = "moving_average"
    envelope.infer_request.input.values.extend([1.0, 2.0])
    envelope.infer_request.config["window_size"].int_value = 2
    parsed = native.parse_infer(envelope.SerializeToString())
    assert parsed is not None and parsed[:3] == (9, "moving_average", "")
    assert native.parse_infer(b"\x08\x01") is None  # no body
    assert native.parse_infer(pb.Envelope(ping=pb.Ping()).SerializeToString()) is None


timing = st.one_of(st.sampled_from([0.0, -0.0, 1e-45]), st.floats(0.0, 1e7))


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(
        st.integers(0, 2**64 - 1),
        st.binary(max_size=30),
        st.binary(max_size=40),
        st.none() | st.binary(max_size=20),
        timing,
        st.binary(max_size=12),
        timing,
    )
)
def test_the_c_reply_encoder_writes_what_the_python_one_does(args: tuple[Any, ...]) -> None:
    assert native.encode_infer_reply(*args) == codec.encode_infer_reply(*args)


def _serve(stream: bytes, cuts: list[int], pure: bool, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Everything the daemon writes back to one connection fed ``stream`` in pieces."""
    with monkeypatch.context() as patch:
        patch.setattr(fastcodec, "parse_infer", None if pure else native.parse_infer)
        patch.setattr(
            fastcodec,
            "encode_infer_reply",
            codec.encode_infer_reply if pure else native.encode_infer_reply,
        )
        # inference_ms is wall time: fixed, so that the replies can be compared whole.
        patch.setattr("commonlib.batcher.time", SimpleNamespace(perf_counter=lambda: 0.0))
        app = make_app()
        client = app.connect()
        previous = 0
        for cut in [*sorted(cuts), len(stream)]:
            client.send_raw(stream[previous:cut])
            previous = cut
            app.clock.advance(0.0005)
        app.settle()
        return bytes(client.transport.value())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    envelopes=st.lists(
        valid_ma_envelopes()
        | valid_ma_envelopes()
        | infer_envelopes(st.sampled_from(["moving_average", "no_such_model", ""])),
        min_size=1,
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 2**16), max_size=6),
    reuse_ids=st.booleans(),
)
def test_both_paths_answer_random_requests_split_anyhow_with_the_same_bytes(
    envelopes: list[pb.Envelope],
    cuts: list[int],
    reuse_ids: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if reuse_ids:  # duplicate ids in flight are refused the same way on both paths
        for i, envelope in enumerate(envelopes):
            envelope.request_id = i % 3
    stream = b"".join(frame_envelope(e) for e in envelopes)
    cuts = [c % (len(stream) + 1) for c in cuts]
    fast = _serve(stream, cuts, False, monkeypatch)
    pure = _serve(stream, cuts, True, monkeypatch)
    assert fast == pure
    assert fast  # every request is answered
    event("some served" if b"\xa2\x01" in fast else "none served")


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40),
        infer_envelopes(st.text(max_size=6)).map(lambda e: e.SerializeToString()),
        st.tuples(st.binary(min_size=1, max_size=11), st.binary(max_size=30)).map(
            lambda t: b"\x08" + t[0] + b"\x52" + bytes([len(t[1])]) + t[1]
        ),
    )
)
def test_the_c_peek_reads_what_the_python_one_does(payload: bytes) -> None:
    assert native.peek_infer_head(payload) == codec.peek_infer_head(payload)
