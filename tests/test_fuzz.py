"""Property-based fuzzing of the frame decoder and packet dispatcher (bounded examples).

The longer, coverage-guided harness is tests/fuzz/fuzz_packets.py (atheris, `make fuzz`).
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commonlib.wire import pb
from factory.client_codec import EnvelopeDecoder, FrameError, frame_payload
from tests.support import App, infer, make_app

MA = [1.0, 2.0, 3.0, 4.0, 5.0]


def _framed_chunks(bodies: list[bytes]) -> bytes:
    return b"".join(frame_payload(b) for b in bodies)


def _check_server_still_serves(app: App) -> None:
    good = app.connect()
    good.send(infer(424242, "moving_average", MA))
    app.settle()
    (reply,) = good.replies()
    assert reply.HasField("infer_response")


def _expected_answers(stream: bytes, max_frame_bytes: int) -> tuple[int, bool]:
    """(replies due, closed): one per complete frame, until an over-long length prefix.

    That prefix is answered FRAME_TOO_LARGE and closes the connection; nothing after it
    is handled, and a trailing partial frame is not answered.
    """
    decoder, frames = EnvelopeDecoder(max_frame_bytes), 0
    decoder.feed(stream)
    try:
        while decoder.next_payload() is not None:
            frames += 1
    except FrameError:
        return frames + 1, True
    return frames, False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.binary(max_size=2048))
def test_random_bytes_never_crash_and_every_frame_is_answered_or_the_connection_closed(
    stream: bytes,
) -> None:
    app = make_app({"server": {"max_frame_bytes": 1024, "max_inflight_per_connection": 1000}})
    client = app.connect()
    client.send_raw(stream)
    app.settle()
    replies = client.replies()
    due, closed = _expected_answers(stream, 1024)
    assert len(replies) == due
    assert client.closed == closed
    if closed:
        assert replies[-1].error.code == pb.ERROR_CODE_FRAME_TOO_LARGE
    _check_server_still_serves(app)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies=st.lists(st.binary(max_size=200), max_size=6),
    splits=st.lists(st.integers(0, 2000), max_size=8),
)
def test_any_byte_split_of_a_stream_is_answered_the_same(
    bodies: list[bytes], splits: list[int]
) -> None:
    stream = _framed_chunks(bodies)
    whole_app = make_app({"server": {"max_inflight_per_connection": 1000}})
    whole = whole_app.connect()
    whole.send_raw(stream)
    whole_app.settle()
    app = make_app({"server": {"max_inflight_per_connection": 1000}})
    split = app.connect()
    cuts = sorted({min(c, len(stream)) for c in splits} | {0, len(stream)})
    for start, end in itertools.pairwise(cuts):
        split.send_raw(stream[start:end])
    app.settle()
    assert [r.SerializeToString() for r in split.replies()] == [
        r.SerializeToString() for r in whole.replies()
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(st.binary(max_size=300), max_size=8))
def test_random_frame_bodies_each_get_exactly_one_answer(bodies: list[bytes]) -> None:
    app = make_app({"server": {"max_inflight_per_connection": 1000}})
    client = app.connect()
    client.send_raw(_framed_chunks(bodies))
    app.settle()
    replies = client.replies()
    # Parses that succeed as requests may share an id; every frame still gets a reply.
    assert len(replies) == len(bodies)
    assert not client.closed
    _check_server_still_serves(app)


config_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda v: pb.ConfigValue(int_value=v)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: pb.ConfigValue(float_value=v)),
    st.booleans().map(lambda v: pb.ConfigValue(bool_value=v)),
    st.text(max_size=20).map(lambda v: pb.ConfigValue(string_value=v)),
    st.just(pb.ConfigValue()),
)


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.Envelope:
    env = pb.Envelope(request_id=draw(st.integers(0, 2**64 - 1)))
    request = env.infer_request
    request.model = draw(st.sampled_from(["moving_average", "lstm_timeseries", "", "x" * 300]))
    request.version = draw(st.sampled_from(["", "1", "2"]))
    request.input.values.extend(draw(st.lists(st.floats(width=32), max_size=80)))
    request.input.shape.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=3)))
    keys = st.sampled_from(
        ["forecast_steps", "window_size", "include_trend", "sequence_length", "hidden_size", "zzz"]
    )
    for key, value in draw(st.dictionaries(keys, config_values, max_size=4)).items():
        request.config[key].CopyFrom(value)
    return env


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes=st.lists(infer_requests(), min_size=1, max_size=6))
def test_structured_requests_are_each_answered_with_a_result_or_a_documented_error(
    envelopes: list[pb.Envelope],
) -> None:
    app = make_app({"server": {"max_inflight_per_connection": 1000}})
    client = app.connect()
    for env in envelopes:
        client.send(env)
    app.settle()
    replies = client.replies()
    assert len(replies) == len(envelopes)
    for reply in replies:
        assert reply.HasField("infer_response") or reply.error.code in (2, 3, 6), reply
    _check_server_still_serves(app)
