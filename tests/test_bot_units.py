"""The bot's parts without a server: UDP scoring, exact merges, the stress barrier, verdicts."""

from __future__ import annotations

import io
import json
import math
import shlex
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from bot.cli import build_parser, parse_args, parse_mix, worker_argv
from bot.client import BotProtocol, ConnectionLostError, Session
from bot.commands import Disconnect, RequestSpec, judge, request_mix
from bot.histogram import decode, encode, merge_encoded, new_histogram, record_us
from bot.merge import merge_worker_reports
from bot.preflight import local_problem
from bot.progress import LiveLine, Tick
from bot.report import slo_checks, slo_verdict, unchecked
from bot.scenarios.soak import latency_drift_ms, read_pid, slope_per_minute
from bot.scenarios.stress import Ramp, step_row
from bot.stats import RunStats, merge_reports
from bot.udp_score import MAX_GAP, SequenceTracker, UdpScorer
from bot.worker_channel import WorkerChannel
from bot.workers import StepBarrier
from commonlib.wire import pb
from factory.client_codec import frame_envelope, frame_payload, ping_envelope

VALUES = [1, 2, 7, 150, 151, 999, 1_000, 12_345, 250_000, 3_000_000, 119_999_999]


def _same_histogram(a: Any, b: Any) -> None:
    """Bucket-by-bucket equality, not just a few percentiles."""
    assert a.get_total_count() == b.get_total_count()
    assert a.get_min_value() == b.get_min_value()
    assert a.get_max_value() == b.get_max_value()
    assert a.get_mean_value() == b.get_mean_value()
    assert a.get_stddev() == b.get_stddev()
    for value in range(1, 2000):
        assert a.get_count_at_value(value) == b.get_count_at_value(value)
    for v in VALUES:
        assert a.get_count_at_value(v) == b.get_count_at_value(v)
    for q in (0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100):
        assert a.get_value_at_percentile(q) == b.get_value_at_percentile(q)


def test_histograms_from_several_processes_merge_into_exactly_one_histogram() -> None:
    whole = new_histogram()
    parts = [new_histogram() for _ in range(4)]
    for i in range(20_000):
        value = VALUES[i % len(VALUES)] + (i * 7919) % 1000
        record_us(whole, value)
        record_us(parts[i % 4], value)
    encoded = [encode(p) for p in parts]  # what crosses the worker pipe
    _same_histogram(merge_encoded(json.loads(json.dumps(encoded))), whole)
    _same_histogram(decode(encode(whole)), whole)
    assert decode("").get_total_count() == 0


def test_worker_time_series_merge_exactly_second_by_second() -> None:
    runs = [RunStats(started=100.0, live=False) for _ in range(3)]
    whole = RunStats(started=100.0, live=False)
    for i in range(3000):
        now = 100.0 + (i % 5) + 0.5
        latency = ((i * 31) % 997 + 1) / 1e4
        for stats in (runs[i % 3], whole):
            stats.on_sent(now)
            stats.on_answer(now, latency)
    merged = merge_reports([r.to_json() for r in runs])
    expected = whole.to_json()
    assert merged["sent"] == expected["sent"] == 3000
    assert merged["latency"] == expected["latency"]
    assert [{k: v for k, v in row.items() if k != "histogram"} for row in merged["series"]] == [
        {k: v for k, v in row.items() if k != "histogram"} for row in expected["series"]
    ]


def test_concurrency_latency_distributions_merge_exactly() -> None:
    def part(values: list[int]) -> dict[str, Any]:
        connect, first = new_histogram(), new_histogram()
        stats = RunStats(started=0.0, live=False)
        for v in values:
            record_us(connect, v)
            record_us(first, v * 3)
            stats.on_sent(0.0)
            stats.on_answer(0.0, v / 1e6)
        return {
            **stats.to_json(),
            "connections": len(values),
            "served": len(values),
            "fd_limit": 4096,
            "connect_failures": {"ConnectionRefusedError": 1},
            "connect_histogram": encode(connect),
            "first_reply_histogram": encode(first),
        }

    merged = merge_worker_reports("concurrency", [part([10, 20, 30]), part([40, 5000])])
    assert merged["connections"] == merged["served"] == 5
    assert merged["connect_failures"] == {"ConnectionRefusedError": 2}
    whole = new_histogram()
    for v in (10, 20, 30, 40, 5000):
        record_us(whole, v)
    _same_histogram(decode(merged["connect_histogram"]), whole)
    assert merged["first_reply_latency"]["max_ms"] == pytest.approx(15.0, rel=1e-3)


def test_the_stress_barrier_judges_each_merged_step_and_tells_every_worker() -> None:
    ramp = Ramp(start_rate=100, step_rate=100, step_s=1.0, slo_p99_ms=5.0, max_error_rate=0.01)
    sent: list[tuple[int, str, dict[str, Any]]] = []
    barrier = StepBarrier(2, ramp, lambda w, kind, body: sent.append((w, kind, body)))

    def step(index: int, latencies_us: list[int], errors: int = 0) -> dict[str, Any]:
        histogram = new_histogram()
        for v in latencies_us:
            record_us(histogram, v)
        counts = {"sent": len(latencies_us) + errors, "answered": len(latencies_us)}
        counts.update(errors=errors, lost=0)
        rate = 50.0 * (index + 1)
        return {
            "index": index,
            "target_rate": rate,
            "counts": counts,
            "histogram": encode(histogram),
        }

    barrier.add(0, step(0, [1000] * 99))
    assert sent == []  # waits for the other worker
    barrier.add(1, step(0, [2000] * 99 + [4000]))
    assert [(w, kind) for w, kind, _ in sent] == [(0, "decision"), (1, "decision")]
    row = sent[0][2]["row"]
    assert row["held"] and row["target_rate"] == 100.0 and row["sent"] == 199
    union = new_histogram()
    for v in [1000] * 99 + [2000] * 99 + [4000]:
        record_us(union, v)
    counts = {"sent": 199, "answered": 199, "errors": 0, "lost": 0}
    assert row == step_row(0, 100.0, 1.0, counts, union, ramp)
    # Step 1: one worker alone is fine, the merged step is not (p99 over 5 ms).
    barrier.add(0, step(1, [1000] * 50))
    barrier.add(1, step(1, [9000] * 50))
    assert not sent[-1][2]["row"]["held"]
    assert barrier.knee_rate == 100.0
    # A worker that dies mid-ramp: the step is decided without it, and not held.
    lonely = StepBarrier(2, ramp, lambda w, kind, body: sent.append((w, kind, body)))
    lonely.add(0, step(0, [1000] * 10))
    lonely.worker_gone(1)
    assert not lonely.rows[0]["held"] and lonely.knee_rate == 0.0


def _datagram(seq: int, ts_us: int, payload: bytes, index: int = 0, count: int = 1) -> bytes:
    return pb.Datagram(
        sequence=seq, server_time_us=ts_us, chunk_index=index, chunk_count=count, payload=payload
    ).SerializeToString()


def _result(request_id: int, model: str = "moving_average") -> bytes:
    message = pb.BroadcastResult(request_id=request_id)
    message.result.model = model
    message.result.predictions.extend([1.0, 2.0, 3.0])
    return message.SerializeToString()


def test_udp_scoring_counts_lost_reordered_duplicated_and_the_delay() -> None:
    scorer = UdpScorer(wall_clock=lambda: 10.0)
    a, b = ("127.0.0.1", 5000), ("127.0.0.1", 5001)
    for seq in (1, 2, 4, 3, 3, 6):  # 5 lost, 3 reordered, 3 duplicated
        scorer.datagramReceived(_datagram(seq, 9_998_000, _result(seq)), a)
    whole = _result(77, "lstm_timeseries")
    half = len(whole) // 2
    scorer.datagramReceived(_datagram(2, 9_999_000, whole[half:], 1, 2), b)  # chunks reversed
    scorer.datagramReceived(_datagram(1, 9_999_000, whole[:half], 0, 2), b)
    scorer.datagramReceived(b"\x08garbage", a)
    report = scorer.report(answered=7)
    assert report["sources"] == 2
    assert report["received"] == 8
    assert (report["lost"], report["reordered"], report["duplicates"]) == (1, 2, 1)
    assert report["results_by_model"] == {"moving_average": 5, "lstm_timeseries": 1}
    assert report["undecodable"] == 1 and report["incomplete_results"] == 0
    assert report["results_missing"] == 1 and report["results_extra"] == 0
    delay = report["delay"]
    assert delay["count"] == 7
    assert delay["max_ms"] == pytest.approx(2.0, rel=1e-3)  # 10 s - 9.998 s
    assert delay["p50_ms"] == pytest.approx(2.0, rel=1e-3)


def test_udp_scoring_reads_the_json_encoding_and_its_chunks() -> None:
    scorer = UdpScorer(wall_clock=lambda: 1.0)
    text = json.dumps({"request_id": 3, "model": "moving_average", "predictions": [1.5]})
    src = ("127.0.0.1", 9)
    whole = {"seq": 1, "ts_us": 999_000, "chunk": 0, "chunks": 1, "result": json.loads(text)}
    scorer.datagramReceived(json.dumps(whole).encode(), src)
    for i, part in enumerate((text[:10], text[10:25], text[25:])):
        message = {"seq": 2 + i, "ts_us": 999_500, "chunk": i, "chunks": 3, "part": part}
        scorer.datagramReceived(json.dumps(message).encode(), src)
    report = scorer.report()
    assert report["received"] == 4 and report["lost"] == 0
    assert report["results"] == 2 and "results_missing" not in report
    assert report["delay"]["max_ms"] == pytest.approx(1.0, rel=1e-3)


def test_sequence_tracking_stays_bounded_on_a_huge_jump() -> None:
    tracker = SequenceTracker()
    assert tracker.see(1)
    assert tracker.see(MAX_GAP * 3)
    assert tracker.lost == MAX_GAP * 3 - 2 and len(tracker.missing) == 0
    assert not tracker.see(1)


def test_replies_to_unknown_ids_are_counted_and_fail_the_run() -> None:
    clock = Clock()
    protocol = BotProtocol(clock)
    protocol.makeConnection(StringTransport())
    answered: list[pb.Envelope] = []
    protocol.request(pb.Envelope(request_id=5, ping=pb.Ping())).addCallback(answered.append)
    pong = pb.Envelope(request_id=5, pong=pb.Pong())
    stranger = pb.Envelope(request_id=99, pong=pb.Pong())
    protocol.dataReceived(frame_envelope(pong) + frame_envelope(pong) + frame_envelope(stranger))
    assert len(answered) == 1 and protocol.unexpected == 2
    stats = RunStats(started=0.0, live=False)
    session = Session(clock, "127.0.0.1", 1, protocol=protocol)
    Disconnect().execute(session, stats)
    assert stats.unexpected == 2
    report = {**stats.to_json(), "scenario": "load"}
    assert slo_verdict(report, None, 0.0) == ["2 replies to no outstanding request id"]


def test_a_bad_frame_from_the_server_fails_the_pending_requests_naming_it() -> None:
    protocol = BotProtocol(Clock())
    transport = StringTransport()
    protocol.makeConnection(transport)
    failures: list[Failure] = []
    protocol.request(ping_envelope(5)).addErrback(failures.append)
    protocol.dataReceived(frame_payload(b"\xff\xff"))
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    (failure,) = failures
    assert failure.check(ConnectionLostError)
    assert "bad frame from the server: a frame of 2 bytes is not a valid Envelope" in str(
        failure.value
    )


def test_slo_verdicts_per_scenario() -> None:
    base = RunStats(started=0.0, live=False)
    for _ in range(100):
        base.on_sent(0.0)
    for _ in range(98):
        base.on_answer(0.0, 0.002)
    base.on_error(0.0, "BUSY")
    base.lost = 1
    report = {**base.to_json(), "scenario": "load"}
    assert slo_verdict(report, 5.0, 0.05) == []
    assert slo_verdict(report, 1.0, 0.05) == ["p99 2.00 ms > 1.00 ms"]
    assert slo_verdict(report, None, 0.01) == ["error rate 2.00% > 1.00%"]
    failover = {**report, "scenario": "failover"}
    assert "failover lost 1, duplicated 0" in slo_verdict(failover, None, 0.05)
    stress = {**report, "scenario": "stress", "knee_rate": 0.0}
    assert slo_verdict(stress, 1.0, 0.0) == ["the SLO broke at the first step: no knee"]
    assert slo_verdict({**stress, "knee_rate": 300.0}, 1.0, 0.0) == []
    assert slo_verdict({**stress, "knee_rate": 300.0, "wrong": 2}, 1.0, 0.0) == ["2 wrong answers"]


def test_replies_are_checked_for_id_model_values_and_length() -> None:
    specs = request_mix(["moving_average", "lstm_timeseries"], weights=[3, 1])
    assert [s.model for s in specs[:4]] == ["moving_average"] * 3 + ["lstm_timeseries"]
    lstm = next(s for s in specs if s.model == "lstm_timeseries")
    reply = pb.Envelope(request_id=1)
    reply.infer_response.model = "lstm_timeseries"
    reply.infer_response.predictions.extend([1.0] * 5)
    assert judge(lstm, 1, reply) == "ok"
    reply.infer_response.predictions[2] = math.nan
    assert judge(lstm, 1, reply) == "WRONG_ANSWER"
    del reply.infer_response.predictions[:]
    reply.infer_response.predictions.extend([1.0] * 4)
    assert judge(lstm, 1, reply) == "WRONG_ANSWER"
    reply.infer_response.model = "moving_average"
    assert judge(RequestSpec("lstm_timeseries", (1.0,)), 1, reply) == "WRONG_ANSWER"


def _flat_soak(warmup_s: float) -> RunStats:
    """30.4 s of 2 ms answers, a slow first second, and 13 slow replies in the last 0.4 s."""
    stats = RunStats(started=0.0, live=False, warmup_s=warmup_s)
    stats.load_started(0.0)
    for i in range(30_000):
        now = i / 1000.0 + 0.0005
        stats.on_sent(now)
        stats.on_answer(now + 0.002, 0.050 if now < 1.0 else 0.002)
    for i in range(13):
        stats.on_sent(30.0 + i / 100)
        stats.on_answer(30.1 + i / 100, 0.040)
    stats.load_ended(30.4)
    return stats


def test_partial_seconds_and_the_warm_up_are_flagged_and_left_out() -> None:
    report = _flat_soak(warmup_s=1.0).to_json()
    series = report["series"]
    assert [row["t"] for row in series] == list(range(31))
    assert [row["t"] for row in series if row["warmup"]] == [0]
    assert [(row["t"], row["span_s"]) for row in series if row["partial"]] == [(30, 0.4)]
    assert sum(row["answered"] for row in series) == report["answered"] == 30_013
    # The slow first second is reported apart; the steady figures hold only the rest.
    assert report["warmup_s"] == 1.0
    assert report["warmup_latency"]["count"] == 1000
    assert report["warmup_latency"]["p50_ms"] == pytest.approx(50.0, rel=1e-2)
    assert report["latency"]["count"] == 29_013
    assert report["latency"]["p99_ms"] == pytest.approx(2.0, rel=1e-2)
    # The 13 replies of the partial last second move neither drift.
    assert latency_drift_ms(series, 50.0) == pytest.approx(0.0, abs=0.01)
    assert latency_drift_ms(series, 99.0) == pytest.approx(0.0, abs=0.01)
    # Without a warm-up the slow first second is steady state: its latencies count.
    cold = _flat_soak(warmup_s=0.0).to_json()
    assert cold["latency"]["count"] == 30_013 and cold["warmup_latency"]["count"] == 0
    assert not any(row["warmup"] for row in cold["series"])
    # Merging workers keeps the flags (a second partial for one worker is so for all).
    merged = merge_reports([report, cold])
    assert [row["t"] for row in merged["series"] if row["partial"]] == [30]
    assert [row["t"] for row in merged["series"] if row["warmup"]] == [0]
    assert merged["warmup_latency"]["count"] == 1000


def test_latency_drift_comes_from_the_distribution_not_a_mean_of_percentiles() -> None:
    def second(t: int, count: int, latency_ms: float) -> dict[str, Any]:
        histogram = new_histogram()
        for _ in range(count):
            record_us(histogram, latency_ms * 1000)
        return {"t": t, "answered": count, "histogram": encode(histogram), "partial": False}

    # First third: 2,000 answers at 1 ms and a quiet second of 10 at 10 ms (a mean of
    # per-second p50s would say 4 ms); last third: 3,000 answers at 1 ms.
    series = [second(0, 1000, 1.0), second(1, 10, 10.0), second(2, 1000, 1.0)]
    series += [second(t, 1000, 1.0) for t in range(3, 9)]
    assert latency_drift_ms(series, 50.0) == pytest.approx(0.0, abs=0.01)
    series[-1] = second(8, 1000, 3.0)  # a real shift in a third of the last third
    assert latency_drift_ms(series, 99.0) == pytest.approx(2.0, rel=1e-2)
    assert latency_drift_ms(series[:2], 50.0) is None  # too few steady seconds


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("load --duration 0", "argument --duration: expected a number > 0, got 0"),
        ("load --duration nan", "argument --duration: expected a finite number"),
        ("load --rate -5", "argument --rate: expected a number >= 0, got -5"),
        ("load --max-error-rate 5", "expected a fraction between 0 and 1 (0.01 = 1 %), got 5"),
        ("load --slo-p99-ms 0", "argument --slo-p99-ms: expected a number > 0"),
        ("load --udp-listen 0", "argument --udp-listen: expected a port 1..65535"),
        ("load --connections x", "argument --connections: expected an integer, got 'x'"),
        ("load --duration 1", "--warmup 1 must be shorter than --duration 1"),
        ("soak --pid 1 --duration 5 --warmup 5", "--warmup 5 must be shorter"),
        ("load --processes 3 --connections 2", "--processes 3 needs at least as many"),
        ("stress --step-seconds -1", "argument --step-seconds: expected a number > 0"),
        ("stress --warmup 1", "unrecognized arguments: --warmup 1"),
        ("stress --refine-steps -1", "argument --refine-steps: expected an integer >= 0"),
        ("load --max-udp-loss 2", "argument --max-udp-loss: expected a fraction"),
        ("load --duration 5 --max-udp-loss 0.01", "--max-udp-loss needs --udp-listen PORT"),
        ("soak --pid 1 --duration 5 --rss-warmup 5", "--rss-warmup 5 must be shorter"),
        (
            "failover --servers h:1 h:2 --kill-pid 5 --kill-after 20",
            "--kill-after 20 must come before --duration 10",
        ),
        (
            "failover --servers h:1 h:2 --kill-pid 5 --restart-cmd x --restart-after 2",
            "--restart-after 2 must fall between --kill-after 3 and --duration 10",
        ),
    ],
)
def test_every_bad_flag_exits_2_with_one_line(
    argv: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(shlex.split(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_the_run_s_files_and_processes_are_checked_before_it_starts(tmp_path: Any) -> None:
    def problem(argv: str) -> str | None:
        return local_problem(parse_args(shlex.split(argv)))

    assert problem(f"load --report {tmp_path}/r.json --plot {tmp_path}/p.png") is None
    missing = tmp_path / "nonexistent" / "r.json"
    assert problem(f"load --report {missing}") == (
        f"--report {missing}: no directory {missing.parent}"
    )
    assert problem(f"load --plot {tmp_path}") == f"--plot {tmp_path}: is a directory"
    assert problem("soak --pid 999999999") == "--pid 999999999: no such process"
    (tmp_path / "ports.json").write_text("{}")
    assert "no pid in it" in str(problem(f"soak --pid-file {tmp_path}/ports.json"))
    assert problem("failover --servers h:1 h:2 --kill-pid 999999999") == (
        "--kill-pid 999999999: no such process"
    )


def test_the_verdict_lists_every_check_that_ran_and_what_did_not() -> None:
    stats = RunStats(started=0.0, live=False)
    stats.on_sent(0.0)
    stats.on_answer(0.0, 0.002)
    report = {**stats.to_json(), "scenario": "load"}
    checks = slo_checks(report, None, 0.0)
    assert [c.detail for c in checks] == [
        "error rate 0.00% <= 0.00%",
        "0 wrong answers",
        "0 replies to no outstanding request id",
    ]
    assert all(c.held for c in checks)
    assert unchecked(report, None) == ["latency (no --slo-p99-ms)"]
    assert unchecked(report, 5.0) == []
    assert [c.detail for c in slo_checks(report, 5.0, 0.0)][1] == "p99 2.00 ms <= 5.00 ms"
    stress = {**report, "scenario": "stress", "knee_rate": 300.0}
    stress["step_slo"] = {"p99_ms": 10.0, "max_error_rate": 0.01}
    assert slo_checks(stress, None, 0.0)[0].detail == (
        "steps held (p99 <= 10 ms, errors <= 1.00%) up to 300 req/s"
    )
    assert unchecked(stress, None) == []


def test_command_line() -> None:
    assert parse_mix("moving_average:3, lstm_timeseries") == (
        ["moving_average", "lstm_timeseries"],
        [3, 1],
    )
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["load", "--models", "moving_average:0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["load", "--proc", "2"])  # no abbreviations: workers strip options
    args = parser.parse_args(["failover", "--servers", "127.0.0.1:1", "127.0.0.1:2"])
    assert args.servers == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    argv = shlex.split(
        "load --processes 2 --report=r.json --plot p.png --udp-listen 9 --udp-json --quiet --rate 5"
    )
    assert worker_argv(argv) == ["load", "--rate", "5"]
    # streams workers listen for their own snapshots (on PORT + their index)
    argv = shlex.split("streams --processes 2 --udp-listen 9 --udp-host 10.0.0.2 --report r")
    assert worker_argv(argv, keep_udp=True) == [
        "streams",
        "--udp-listen",
        "9",
        "--udp-host",
        "10.0.0.2",
    ]


def test_soak_helpers(tmp_path: Any) -> None:
    assert slope_per_minute([0.0, 30.0, 60.0], [100.0, 101.0, 102.0]) == pytest.approx(2.0)
    (tmp_path / "ports.json").write_text('{"tcp": 1, "pid": 4242}')
    (tmp_path / "pid").write_text("77\n")
    assert read_pid(tmp_path / "ports.json") == 4242 and read_pid(tmp_path / "pid") == 77


def test_worker_channel_lines_and_progress_ticks() -> None:
    channel = WorkerChannel()
    transport = StringTransport()
    channel.makeConnection(transport)
    tick = Tick(sent=3, answered=2, errors=1)
    record_us(tick.histogram, 1500)
    channel.send("progress", tick=tick.to_json())
    line = json.loads(transport.value().splitlines()[0])
    back = Tick.from_json(line["tick"])
    assert (back.sent, back.answered, back.errors, back.histogram.get_total_count()) == (3, 2, 1, 1)
    got: list[dict[str, Any]] = []
    channel.dataReceived(b'{"type": "go"}\n')
    channel.expect("go").addCallback(got.append)  # queued before it was asked for
    channel.expect("decision").addCallback(got.append)
    channel.dataReceived(b'{"type": "decision", "row": {"held": true}}\n')
    assert [m["type"] for m in got] == ["go", "decision"]


def test_live_line_text() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=False)
    line = LiveLine(console, "bot load")
    tick = Tick(sent=1000, answered=1000)
    for _ in range(1000):
        record_us(tick.histogram, 2000)
    line.show(1.0, tick, 1.0)
    text = line.render(1.0, tick, 1.0)
    assert "1,000 req/s" in text and "p99    2.00 ms" in text and "errors 0" in text
    line.close()
    assert "1,000 req/s" in console.file.getvalue()  # type: ignore[attr-defined]


def test_a_cached_request_payload_is_the_envelope_itself() -> None:
    for spec in request_mix(["moving_average", "lstm_timeseries"]):
        for request_id in (0, 1, 300, 2**40 + 7):
            parsed = pb.Envelope.FromString(spec.payload(request_id))
            assert parsed == spec.envelope(request_id)


def test_past_seconds_are_kept_encoded_and_still_exact() -> None:
    stats = RunStats(started=0.0, live=False)
    reference = RunStats(started=0.0, live=False)
    for i in range(5000):
        now = i / 1000.0  # five seconds
        stats.on_answer(now, (i % 97 + 1) / 1e4)
        record_us(reference.second(now).histogram, (i % 97 + 1) * 100)
    assert [stats.seconds[t].sealed for t in range(5)] == [True, True, True, False, False]
    stats.on_answer(0.5, 0.001)  # a value for a sealed second reopens it
    record_us(reference.second(0.5).histogram, 1000)
    for t in range(5):
        _same_histogram(stats.seconds[t].histogram, reference.seconds[t].histogram)
    assert stats.to_json()["series"][0]["histogram"] == encode(reference.seconds[0].histogram)
