"""`bot streams`: the scoring, the engine connection and the search without a server, then
the whole scenario against a real daemon (small N, a couple of seconds)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bot.histogram import new_histogram
from bot.merge import merge_stream_reports
from bot.report import slo_checks
from bot.scenarios.streams import StreamPlan, StreamRun, next_size, parse_counters
from bot.stream_client import ObservationBank, StreamConnection, StreamOpenError
from bot.stream_score import ConnectionLedger, ServedCounts, SnapshotMatcher, StreamScore, summary
from commonlib.motion import FRAME_WIDTH
from commonlib.wire import pb
from factory.client_codec import EnvelopeDecoder, frame_envelope
from factory.tick_codec import pack_ids, pack_rows, unpack_ids, unpack_rows
from tests.daemon_process import DaemonProcess, run_daemon
from tests.support import run_bot

ROOT = Path(__file__).resolve().parents[1]
PERIOD = 1 / 60


def _ledger() -> ConnectionLedger:
    ledger = ConnectionLedger(first_id=10, characters=3, deadline_s=2 * PERIOD)
    for frame in range(4):  # frames 1..4 sent at 0, 16.7, 33.3, 50 ms
        assert ledger.sent(frame * PERIOD) == frame + 1
    return ledger


def test_an_observation_is_served_by_its_output_or_a_newer_one_within_two_ticks() -> None:
    ledger = _ledger()
    histogram = new_histogram()
    first = ledger.serve(np.array([0, 1, 2]), 1, 0.010, histogram)
    assert (first.observations, first.on_time, first.coalesced, first.characters) == (3, 3, 0, 3)
    # Frame 3 reaches characters 0 and 1 at 60 ms: it serves frames 2 and 3 of both;
    # frame 2 (sent at 16.7 ms) is 43 ms old, past the 33 ms deadline, and was coalesced.
    later = ledger.serve(np.array([0, 1]), 3, 0.060, histogram)
    assert (later.observations, later.on_time, later.coalesced, later.characters) == (4, 2, 2, 2)
    # An older result arriving after a newer one (UDP reordering) serves nothing.
    assert ledger.serve(np.array([0]), 2, 0.070, histogram).observations == 0
    assert ledger.serve(np.array([0]), 9, 0.070, histogram).observations == 0  # never sent
    # Character 2 waits for frames 2..4, characters 0 and 1 for frame 4.
    assert ledger.unserved() == 5
    assert 3 * ledger.frames == 3 + 4 + ledger.unserved()
    assert histogram.get_total_count() == 5  # one latency per character and result
    assert histogram.get_value_at_percentile(100) == pytest.approx(
        (0.060 - 2 * PERIOD) * 1e6, rel=1e-3
    )


def test_warm_up_frames_are_served_but_never_scored() -> None:
    ledger = ConnectionLedger(first_id=1, characters=2, deadline_s=2 * PERIOD, scored_from=3)
    for frame in range(4):  # frames 1..4; 1 and 2 are the warm-up
        ledger.sent(frame * PERIOD)
    histogram = new_histogram()
    # Frame 1's output (late: 100 ms) is the warm-up's: nothing scored, nothing recorded.
    assert ledger.serve(np.array([0, 1]), 1, 0.100, histogram) == ServedCounts()
    assert histogram.get_total_count() == 0
    # Frame 4 serves frames 2..4 of character 0: only 3 and 4 are scored (3 coalesced).
    counts = ledger.serve(np.array([0]), 4, 3 * PERIOD + 0.005, histogram)
    assert (counts.observations, counts.on_time, counts.coalesced) == (2, 2, 1)
    assert ledger.scored_frames == 2
    # Character 1 still waits for frames 2..4, of which 3 and 4 count as unserved.
    assert ledger.unserved() == 2
    assert 2 * ledger.scored_frames == counts.observations + ledger.unserved()


def test_snapshot_parts_wait_for_the_tick_result_naming_their_frame() -> None:
    served: list[tuple[float, int, float]] = []
    score = StreamScore(
        [ConnectionLedger(1, 3, 2 * PERIOD), ConnectionLedger(4, 3, 2 * PERIOD)],
        on_served=lambda now, counts, latency: served.append((now, counts.characters, latency)),
    )
    for ledger in score.ledgers:
        ledger.sent(0.0)
    matcher = SnapshotMatcher(score)
    # A snapshot part of server tick 100 with characters of both connections and another
    # client's (another bot process's): that one is left out.
    matcher.snapshot(100, np.array([5, 1, 99, 6], dtype=np.uint32), 0.004)
    assert score.served.observations == 0 and score.foreign_rows == 1
    matcher.tick_result(0, 100, 1)  # connection 0's TickResult: tick 100 consumed frame 1
    assert score.served.observations == 1 and served == [(0.004, 1, 0.004)]
    matcher.tick_result(1, 100, 1)
    assert score.served.observations == 3 and score.unknown_rows == 0
    # Over TCP a row the connection does not own is the server's mistake.
    score.serve(0, np.array([1, 4], dtype=np.uint32), 1, 0.005)
    assert score.unknown_rows == 1
    matcher.snapshot(101, np.array([2], dtype=np.uint32), 0.020)  # never named: unmatched
    matcher.finish()
    assert matcher.unmatched == 1 and matcher.parts == 2
    report = summary(score)
    assert report["observations_sent"] == 6 and report["on_time"] == 3
    assert report["unserved"] == 3 and report["on_time_ratio"] == 0.5


def test_output_rows_of_the_wrong_width_or_not_finite_are_wrong() -> None:
    score = StreamScore([])
    rows = np.ones((4, 5), dtype=np.float32)
    score.check_rows(rows, 5)
    assert score.wrong == 0
    rows[1, 2] = np.nan
    rows[3, 0] = np.inf
    score.check_rows(rows, 5)
    assert score.wrong == 2
    score.check_rows(rows, 51)
    assert score.wrong == 6


def test_generated_observations_are_cheap_gathers_of_looped_motion() -> None:
    bank = ObservationBank("motion_lstm", clips=4, frames=120)
    rows = bank.rows(first=1, count=10, frame=7)
    assert rows.shape == (10, FRAME_WIDTH) and rows.dtype == np.float32
    assert np.isfinite(rows).all()
    assert not np.array_equal(rows[0], rows[4])  # same clip, another phase
    assert not np.array_equal(rows, bank.rows(1, 10, 8))  # the motion moves
    assert np.array_equal(rows, bank.rows(1, 10, 7 + 120))  # and loops
    series = ObservationBank("lstm_timeseries", clips=4, frames=120).rows(1, 3, 0)
    assert series.shape == (3, 1) and series.dtype == np.float32


class _TcpTransport(StringTransport):
    """A StringTransport with the TCP option a real connection has."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


def _sent(transport: StringTransport) -> list[pb.Envelope]:
    data = transport.value()
    transport.clear()
    return list(EnvelopeDecoder().feed(data))


def test_an_engine_connection_opens_its_streams_sends_packed_ticks_and_reads_results() -> None:
    clock = Clock()
    clock.advance(5.0)
    results: list[tuple[int, pb.TickResult, float]] = []
    connection = StreamConnection(3, clock, lambda c, r, now: results.append((c.index, r, now)))
    transport = _TcpTransport()
    connection.makeConnection(transport)
    assert transport.no_delay  # frames leave at once, never held back by Nagle
    opened: list[Any] = []
    connection.open_streams("motion_lstm", 7, 2).addBoth(opened.append)
    opens = _sent(transport)
    assert [(e.request_id, e.stream_open.character_id) for e in opens] == [(7, 7), (8, 8)]
    for envelope in opens:
        reply = pb.Envelope(request_id=envelope.request_id)
        reply.stream_opened.character_id = envelope.request_id
        reply.stream_opened.output_width = FRAME_WIDTH
        connection.dataReceived(frame_envelope(reply))
    assert [o.character_id for o in opened[0]] == [7, 8]

    rows = np.arange(2 * FRAME_WIDTH, dtype=np.float32).reshape(2, FRAME_WIDTH)
    connection.send_tick("motion_lstm", 12, 5_000_000, rows)
    (tick,) = _sent(transport)
    assert tick.request_id == 12 and tick.tick.client_tick == 12
    assert unpack_ids(tick.tick.ids).tolist() == [7, 8]
    assert np.array_equal(unpack_rows(tick.tick.observations, FRAME_WIDTH), rows)

    result = pb.Envelope(request_id=12)
    result.tick_result.client_tick = 12
    result.tick_result.ids = pack_ids([7, 8])
    result.tick_result.outputs = pack_rows(rows)
    refused = pb.Envelope(request_id=12, error=pb.Error(code=pb.ERROR_CODE_UNKNOWN_STREAM))
    refused.error.character_ids.extend([8])
    closed = pb.Envelope(request_id=0, stream_closed=pb.StreamClosed(character_id=7))
    connection.dataReceived(
        frame_envelope(result) + frame_envelope(refused) + frame_envelope(closed)
    )
    assert [(index, r.client_tick, now) for index, r, now in results] == [(3, 12, 5.0)]
    assert connection.errors == {"UNKNOWN_STREAM": 1} and connection.closed_by_server == 1

    failed: list[Any] = []
    connection.open_streams("motion_lstm", 20, 1).addErrback(failed.append)
    assert [e.request_id for e in _sent(transport)] == [20]
    no = pb.Envelope(request_id=20, error=pb.Error(code=pb.ERROR_CODE_TOO_MANY_STREAMS))
    connection.dataReceived(frame_envelope(no))
    assert failed and "TOO_MANY_STREAMS" in str(failed[0].value.subFailure.value)
    assert isinstance(failed[0].value.subFailure.value, StreamOpenError)


def _run(**changes: Any) -> StreamRun:
    plan = StreamPlan("127.0.0.1", 1, "lstm_timeseries", 4, 1, lead_s=0.002, **changes)
    return StreamRun(Clock(), plan, ObservationBank("lstm_timeseries", clips=1, frames=8))


def test_ticks_that_miss_their_server_tick_move_the_sends_earlier() -> None:
    run = _run()
    run._judge_ticks(0, 1, 2_000)  # consumed by the tick it was sent 2 ms ahead of
    run._judge_ticks(0, 3, 2_500)  # frame 2 came in after its tick: replaced by frame 3
    run._judge_ticks(0, 4, 19_000)  # consumed a tick late
    run._judge_ticks(0, 2, 2_000)  # an older result: already judged
    assert (run.ticks_judged, run.missed_tick) == (4, 2)
    run._adapt_lead(10.0, PERIOD)
    assert run.lead_s == pytest.approx(0.003) and len(run.lead_changes) == 1
    for frame in range(5, 105):  # 100 Ticks on time: the lead stays
        run._judge_ticks(0, frame, 3_000)
    run._adapt_lead(10.25, PERIOD)
    assert run.lead_s == pytest.approx(0.003)
    fixed = _run(adapt_lead=False)
    fixed._judge_ticks(0, 1, 2_000)
    fixed._judge_ticks(0, 9, 30_000)
    fixed._adapt_lead(10.0, PERIOD)
    assert fixed.missed_tick == 8 and fixed.lead_s == 0.002  # counted, never moved


def test_find_max_doubles_then_bisects_to_within_five_percent() -> None:
    limit, good = 700, 0
    size: int | None = 100
    bad: int | None = None
    tried: list[int] = []
    while size is not None:
        tried.append(size)
        if size <= limit:
            good = size
        else:
            bad = size if bad is None else min(bad, size)
        size = next_size(good, bad, size, floor=4)
    assert tried == [100, 200, 400, 800, 600, 700, 750, 725]
    assert good == 700
    # Nothing holds: halve down to the connections, then stop.
    assert next_size(0, 100, 100, floor=4) == 50
    assert next_size(0, 8, 8, floor=4) == 4
    assert next_size(0, 4, 4, floor=4) is None


def test_worker_reports_merge_and_the_verdict_reads_the_on_time_ratio() -> None:
    def part(sent: int, on_time: int) -> dict[str, Any]:
        histogram = new_histogram()
        histogram.record_value(5000, on_time)
        from bot.histogram import encode

        encoded = encode(histogram)
        return {
            "scenario": "streams",
            "sent": sent,
            "answered": sent,
            "errors": {},
            "lost": 0,
            "histogram": encoded,
            "series": [],
            "characters": 10,
            "connections": 2,
            "frames": sent // 10,
            "tick_results": 4,
            "observations_sent": sent,
            "observations_served": sent,
            "on_time": on_time,
            "late": sent - on_time,
            "unserved": 0,
            "coalesced": 0,
            "wrong_rows": 0,
            "unknown_rows": 0,
            "foreign_rows": 0,
            "closed_by_server": 0,
            "stream_errors": {"UNKNOWN_STREAM": 1},
            **{f"{n}_histogram": encoded for n in ("send_lag", "server_tick_lag", "server_step")},
            "min_on_time": 0.999,
            "deadline_ms": 33.3,
        }

    merged = merge_stream_reports([part(1000, 1000), part(1000, 990)])
    assert merged["observations_sent"] == 2000 and merged["on_time"] == 1990
    assert merged["on_time_ratio"] == pytest.approx(0.995)
    assert merged["characters"] == 20 and merged["stream_errors"] == {"UNKNOWN_STREAM": 2}
    assert merged["send_lag"]["count"] == 1990
    (check, *_) = slo_checks(merged, None, 0.0)
    assert not check.held and check.detail == "on time 99.500% < 99.900% (served within 33.3 ms)"
    assert slo_checks({**merged, "on_time_ratio": 0.9995}, None, 0.0)[0].held
    assert not slo_checks({**merged, "max_characters": 0}, None, 0.0)[0].held


def test_server_counters_are_read_from_the_metrics_page() -> None:
    text = "\n".join(
        [
            "# TYPE inference_stream_ticks_missed counter",
            'inference_stream_ticks_missed_total{model="motion_lstm"} 3.0',
            'inference_stream_ticks_missed_total{model="lstm_timeseries"} 9.0',
            'inference_stream_observations_coalesced_total{model="motion_lstm"} 40.0',
            'inference_stream_ticks_total{model="motion_lstm"} 600.0',
        ]
    )
    assert parse_counters(text, "motion_lstm") == {
        "ticks_stepped": 600.0,
        "ticks_missed": 3.0,
        "coalesced": 40.0,
    }


# -- against a real daemon ----------------------------------------------------------------


MAX_STREAMS = 24  # the daemon's streams.max_total: a find-max step beyond it is refused
# The runs check the report's invariants, not the shared host's timing: --min-on-time 1.


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    config = {"streams": {"max_total": MAX_STREAMS}}
    with run_daemon(tmp_path_factory.mktemp("bot-streams"), config) as d:
        yield d


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _bot(tmp_path: Path, command: str) -> tuple[int, dict[str, Any], str]:
    return run_bot(tmp_path, command)


def _invariants(report: dict[str, Any], characters: int) -> None:
    assert report["sent"] == report["answered"] + report["lost"] == report["observations_sent"]
    # Each process sends every frame (in several processes, one may send one less).
    frames = report["frames"] - report["warmup_frames"]
    assert report["warmup_frames"] == round(report["warmup_s"] * report["hz"])
    assert characters * (frames - 1) <= report["observations_sent"] <= characters * frames
    assert report["observations_served"] == report["on_time"] + report["late"]
    assert report["unserved"] == report["lost"]
    assert report["wrong_rows"] == report["unknown_rows"] == report["unexpected"] == 0
    assert report["stream_errors"] == {}
    assert report["latency"]["count"] > 0 and report["latency"]["p50_ms"] > 0
    assert report["on_time"] > 0
    assert sum(row["sent"] for row in report["series"]) == report["sent"]


def test_streams_over_udp_snapshots_against_the_daemon(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    code, report, out = _bot(
        tmp_path,
        f"streams --server 127.0.0.1:{daemon.tcp_port} --model motion_lstm --characters 20 "
        f"--connections 2 --duration 2 --udp-listen {_free_udp_port()} --min-on-time 1 "
        f"--metrics-url http://127.0.0.1:{daemon.http_port}/metrics",
    )
    assert code == 0, out
    _invariants(report, 20)
    assert report["warmup_frames"] == 60  # the default 1 s warm-up, not scored
    assert 100 <= report["frames"] - 60 <= 125  # then 60 frames a second for 2 s
    assert report["server_tick_hz"] == 60.0 and report["aligned"]
    assert report["tick_results"] >= report["frames"]  # one per connection per tick
    udp = report["udp"]
    # 20 poses do not fit one 1,200-byte datagram: every tick comes in several parts.
    # A bot process stalled for a second by the shared host can overflow its socket
    # buffer: allow a rare drop.
    assert udp["received"] > 2 * report["frames"] and udp["lost"] <= udp["received"] // 100
    assert udp["ticks_unmatched"] == 0 and udp["snapshot_parts"] == udp["received"]
    # The parts of a tick are scored together: one scored snapshot per server tick.
    assert udp["snapshot_ticks"] <= report["server_counters"]["ticks_stepped"]
    assert udp["snapshot_ticks"] * 2 <= udp["snapshot_parts"]
    assert report["server_counters"]["ticks_stepped"] >= report["frames"] * 0.8
    assert "on time" in out and "SLO held: on time" in out
    # --metrics-url gives the /status beside it: read before and after the run
    status = report["server_status"]
    assert status["urls"] == [f"http://127.0.0.1:{daemon.http_port}/status"]
    assert all("queues" in status[when][status["urls"][0]] for when in ("before", "after"))


def test_streams_over_udp_with_the_datagram_size_the_bot_asked_for(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    code, report, out = _bot(
        tmp_path,
        f"streams --server 127.0.0.1:{daemon.tcp_port} --model motion_lstm --characters 20 "
        f"--connections 2 --duration 1 --warmup 0.5 --udp-listen {_free_udp_port()} "
        "--udp-datagram-bytes 8192 --min-on-time 1",
    )
    assert code == 0, out
    udp = report["udp"]
    # 20 poses (4.2 kB) fit one 8,192-byte datagram: one part per tick, none lost.
    assert udp["lost"] == 0 and udp["snapshot_parts"] == udp["snapshot_ticks"] > 30
    assert report["observations_served"] > 0


def test_streams_in_two_processes_and_the_search_over_tcp(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    server = f"127.0.0.1:{daemon.tcp_port}"
    code, report, out = _bot(
        tmp_path,
        f"streams --server {server} --model lstm_timeseries --characters 9 --connections 3 "
        f"--duration 1.5 --processes 2 --min-on-time 1 --udp-listen {_free_udp_port()}",
    )
    assert code == 0, out
    _invariants(report, 9)
    assert report["processes"] == 2 and report["connections"] == 3
    # Each process listens on its own port and leaves the other's characters out.
    assert report["udp"]["sources"] == 2 and report["foreign_rows"] > 0
    code, report, out = _bot(
        tmp_path,
        f"streams --server {server} --characters 2 --connections 2 --duration 0.5 "
        "--find-max --max-steps 2 --min-on-time 1",
    )
    assert code == 0, out
    assert [step["characters"] for step in report["steps"]] == [2, 4]
    assert report["max_characters"] >= 2 and "find-max steps" in out
    # A latency SLO nobody can meet: no step holds, exit 1.
    code, report, out = _bot(
        tmp_path,
        f"streams --server {server} --characters 2 --connections 2 --duration 0.5 "
        "--find-max --max-steps 2 --slo-p99-ms 0.001",
    )
    assert code == 1 and "find-max: no step held the SLO" in out, out
    # A step the server refuses (more streams than streams.max_total) does not hold.
    code, report, out = _bot(
        tmp_path,
        f"streams --server {server} --characters 13 --connections 1 --duration 0.5 "
        "--find-max --max-steps 2 --min-on-time 1",
    )
    assert code == 0, out
    assert report["max_characters"] == 13
    assert "TOO_MANY_STREAMS" in report["steps"][1]["refused"] and "refused" in out
