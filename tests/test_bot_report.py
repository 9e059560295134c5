"""The bot's reports as locust, k6, wrk2 and perf_analyzer users expect them: metadata,
the JSON schema, thresholds, --compare against a baseline, per-model figures."""

from __future__ import annotations

import json
import re
import shlex
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.cli import config_setting, parse_args, worker_argv
from bot.commands import request_mix
from bot.compare import compare, tolerance
from bot.figures import figures, split_name
from bot.launch import payload_of
from bot.meta import SCHEMA_PATH, parameters
from bot.preflight import local_problem
from bot.stages import Stages, parse_stages
from bot.stats import RunStats, merge_reports
from bot.thresholds import judge_thresholds, parse_threshold, thresholds_of
from commonlib.wire import pb
from tests.daemon_process import DaemonProcess, run_daemon
from tests.support import run_bot, validate_report

PATIENT = {"inference": {"batching": {"queue_timeout_ms": 0, "max_queue_delay_ms": 0}}}


def _load_report(p99_ms: float = 2.0, answered: int = 98, duration: float = 10.0) -> dict[str, Any]:
    stats = RunStats(started=0.0, live=False)
    for _ in range(100):
        stats.on_sent(0.0)
    for _ in range(answered):
        stats.on_answer(0.0, p99_ms / 1000.0)
    for _ in range(100 - answered):
        stats.on_error(0.0, "BUSY")
    return {**stats.to_json(), "scenario": "load", "duration_s": duration, "meta": {}}


def test_thresholds_parse_k6_style_and_judge_every_figure() -> None:
    t = parse_threshold("p99_ms<10")
    assert (t.figure, t.op, t.limit) == ("p99_ms", "<", 10.0)
    assert parse_threshold(" error_rate <= 1% ").limit == pytest.approx(0.01)
    assert parse_threshold("p99_ms{model=lstm_timeseries}>=2").figure == (
        "p99_ms{model=lstm_timeseries}"
    )
    for bad in ("p99<10", "p99_ms=10", "p99_ms<ten", "req_s{model=x}>1", "p99_ms{model=}<1"):
        with pytest.raises(Exception, match="bad threshold"):
            parse_threshold(bad)
    report = _load_report()
    judged = judge_thresholds(
        report,
        [parse_threshold(x) for x in ("p99_ms<10", "p99_ms<1", "error_rate<1%", "req_s>5")],
    )
    assert [row["passed"] for row in judged] == [True, False, False, True]
    assert judged[1]["clause"] == "p99_ms 2.00 ms >= 1.00 ms"
    assert judged[2]["clause"] == "error_rate 2.00% >= 1.00%"
    assert judged[3]["value"] == pytest.approx(9.8)


def test_slo_flags_are_sugar_for_thresholds() -> None:
    args = parse_args(
        shlex.split("load --slo-p99-ms 5 --max-error-rate 0.01 --threshold 'p50_ms<3'")
    )
    assert [(t.figure, t.op, t.limit, t.source) for t in thresholds_of(args)] == [
        ("p99_ms", "<=", 5.0, "--slo-p99-ms"),
        ("error_rate", "<=", 0.01, "--max-error-rate"),
        ("p50_ms", "<", 3.0, "p50_ms<3"),
    ]
    # stress judges each step on them, so they are no thresholds on the whole run
    assert thresholds_of(parse_args(["stress", "--slo-p99-ms", "5"])) == []
    soak = parse_args(shlex.split("soak --pid 1 --max-rss-slope-mib-per-h 5"))
    assert [t.figure for t in thresholds_of(soak)] == ["error_rate", "rss_slope_mib_per_h"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("load --threshold 'knee_rate>10'", "knee_rate is not measured by load (only by stress)"),
        ("load --threshold 'udp_loss<0.001'", "udp_loss needs --udp-listen PORT"),
        ("load --threshold 'p99_ms{model=lstm_timeseries}<5'", "'lstm_timeseries' is not in"),
        ("load --threshold 'p99<5'", "bad threshold 'p99<5'"),
        ("load --tolerance 5%", "--tolerance needs --compare BASELINE.json"),
        ("load --compare b.json --tolerance 0", "expected a percentage in (0, 1000]"),
        ("load --compare b.json --compare-figures p99_ms,nope", "unknown figure 'nope'"),
        ("load --status-url 127.0.0.1:9100/status", "expected an http:// URL"),
    ],
)
def test_bad_report_flags_exit_2_with_one_line(
    argv: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(shlex.split(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_the_baseline_is_checked_before_the_run(tmp_path: Path) -> None:
    def problem(path: Path, scenario: str = "load") -> str | None:
        return local_problem(parse_args([scenario, "--compare", str(path)]))

    assert problem(tmp_path / "none.json") == (
        f"--compare {tmp_path}/none.json: No such file or directory"
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert "not JSON" in str(problem(bad))
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_load_report() | {"meta": None}))
    assert "not a bot report (no meta" in str(problem(old))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_load_report()))
    assert problem(good) is None
    assert problem(good, "concurrency") == (f"--compare {good}: a load report, this is concurrency")


def test_compare_flags_regressions_beyond_the_tolerance_in_the_right_direction() -> None:
    assert tolerance("10%") == tolerance("10") == pytest.approx(0.1)
    base = _load_report(p99_ms=2.0, answered=98)
    same = {row["figure"]: row["verdict"] for row in compare(base, base, 0.1)}
    assert set(same.values()) == {"same"} and "max_ms" not in same and "req_s" in same
    slower = _load_report(p99_ms=2.5, answered=98)
    rows = {row["figure"]: row for row in compare(base, slower, 0.1)}
    assert rows["p99_ms"]["verdict"] == "regression"
    assert rows["p99_ms"]["delta_pct"] == pytest.approx(25.0, abs=0.2)
    assert rows["error_rate"]["verdict"] == "same"
    assert compare(base, slower, 0.3)[0]["verdict"] == "worse"  # within 30 %
    # higher is better for throughput; lower is better for latency and errors
    faster = _load_report(p99_ms=1.0, answered=100, duration=5.0)
    rows = {row["figure"]: row for row in compare(base, faster, 0.1)}
    assert rows["req_s"]["verdict"] == "better" and rows["p99_ms"]["verdict"] == "better"
    assert rows["error_rate"]["verdict"] == "better"
    rows = {row["figure"]: row for row in compare(faster, base, 0.1)}
    assert rows["req_s"]["verdict"] == rows["error_rate"]["verdict"] == "regression"
    only = compare(base, slower, 0.1, ["max_ms", "req_s"])
    assert [row["figure"] for row in only] == ["max_ms", "req_s"]


def test_meta_parameters_hold_every_flag_s_resolved_value() -> None:
    args = parse_args(shlex.split("load --models moving_average:3,lstm_timeseries --rate 50"))
    params = parameters(args)
    assert params["models"] == [
        {"model": "moving_average", "weight": 3},
        {"model": "lstm_timeseries", "weight": 1},
    ]
    assert params["server"] == "127.0.0.1:7600" and params["rate"] == 50.0
    assert params["warmup"] == 1.0 and params["inflight"] == 16 and params["tolerance"] == 0.1
    assert "worker" not in params
    json.dumps(params)  # every value is JSON
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["properties"]["meta"]["$ref"] == "#/$defs/meta"
    # the report flags stay with the parent process
    argv = shlex.split(
        "load --threshold p99_ms<5 --compare b.json --tolerance 5% --compare-figures p99_ms "
        "--status-url http://h:1/status --rate 5"
    )
    assert worker_argv(argv) == ["load", "--rate", "5"]


def test_the_schema_rejects_what_it_must() -> None:
    report = _load_report()
    with pytest.raises(AssertionError, match="meta"):
        validate_report(report)
    assert split_name("p99.9_ms{model=a}") == ("p99.9_ms", "a")
    assert "p99.9_ms" in figures(report)


def _timings(queue: float, infer: float, total: float, batch: int) -> pb.Timings:
    return pb.Timings(queue_wait_ms=queue, inference_ms=infer, total_ms=total, batch_size=batch)


def test_per_model_counts_and_where_the_time_went() -> None:
    stats = RunStats(started=0.0, live=False, warmup_s=1.0)
    stats.load_started(0.0)
    for i in range(10):
        stats.on_sent(2.0, "a")
        stats.on_answer(2.0 + 0.010, 0.010, "a", _timings(2.0, 1.0, 4.0 + i % 2, 8))
    stats.on_sent(0.1, "a")
    stats.on_answer(0.2, 0.1, "a", _timings(50.0, 1.0, 90.0, 1))  # a warm-up answer
    stats.on_sent(2.0, "b")
    stats.on_error(2.1, "BUSY", "b")
    stats.on_sent(2.0, "b")  # never answered
    report = stats.to_json()
    a, b = report["models"]["a"], report["models"]["b"]
    assert (a["sent"], a["answered"], a["error_count"], a["lost"]) == (11, 11, 0, 0)
    assert (b["sent"], b["answered"], b["errors"], b["lost"]) == (2, 0, {"BUSY": 1}, 1)
    server = a["server"]
    assert a["latency"]["count"] == server["server_total"]["count"] == 10  # warm-up left out
    assert server["queue_wait"]["p99_ms"] == pytest.approx(2.0, rel=1e-3)
    assert server["batch_size"] == {"mean": 8.0, "p50": 8.0, "p99": 8.0, "max": 8.0}
    overhead = server["client_overhead"]  # 10 ms client latency - 4 or 5 ms server total
    assert (overhead["p50_ms"], overhead["p99_ms"]) == pytest.approx((5.0, 6.0), rel=1e-3)
    went = server["where_the_time_went"]
    assert went["queue_wait_ms"] == pytest.approx(2.0, rel=1e-3)
    assert went["other_server_ms"] == pytest.approx(1.5, abs=0.01)  # 4.5 - 2 - 1
    assert sum(went.values()) == pytest.approx(a["latency"]["mean_ms"], rel=1e-3)
    values = figures({**report, "scenario": "load", "duration_s": 1.0})
    assert values["server_total_p99_ms{model=a}"] == pytest.approx(5.0, rel=1e-3)
    assert values["error_rate{model=b}"] == 1.0 and (values["p99_ms{model=a}"] or 0) > 0
    # Two workers' per-model figures merge exactly into the same numbers as one.
    half = RunStats(started=0.0, live=False)
    other = RunStats(started=0.0, live=False)
    for i in range(10):
        (half if i % 2 else other).on_answer(0.0, 0.010, "a", _timings(2.0, 1.0, 4.0 + i % 2, 8))
    whole = RunStats(started=0.0, live=False)
    for i in range(10):
        whole.on_answer(0.0, 0.010, "a", _timings(2.0, 1.0, 4.0 + i % 2, 8))
    merged = merge_reports([half.to_json(), other.to_json()])["models"]
    assert merged == whole.to_json()["models"]


# -- against a real daemon ----------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with run_daemon(tmp_path_factory.mktemp("bot-report"), PATIENT) as d:
        yield d


def test_a_report_has_its_metadata_status_thresholds_and_compares(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    server = f"127.0.0.1:{daemon.tcp_port}"
    status = f"http://127.0.0.1:{daemon.http_port}/status"
    code, report, out = run_bot(
        tmp_path,
        f"load --server {server} --duration 1.5 --rate 300 --status-url {status} "
        "--models moving_average:2,lstm_timeseries --threshold 'p99_ms<5000' "
        "--threshold 'req_s>1' --threshold 'p50_ms<0.001' "
        "--threshold 'server_total_p99_ms{model=lstm_timeseries}<5000'",
    )
    assert code == 1, out  # p50 under a microsecond: no
    models = report["models"]
    assert sorted(models) == ["lstm_timeseries", "moving_average"]
    for key in ("sent", "answered", "error_count", "lost"):
        assert sum(m[key] for m in models.values()) == report[key]
    mix = models["moving_average"]["sent"], models["lstm_timeseries"]["sent"]
    assert mix[0] == pytest.approx(2 * mix[1], abs=2)
    for part in models.values():
        timings = part["server"]
        assert timings["server_total"]["count"] == part["latency"]["count"] > 0
        assert 0 < timings["server_total"]["p50_ms"] <= part["latency"]["p99_ms"]
        assert timings["batch_size"]["mean"] >= 1
        assert timings["inference"]["p50_ms"] <= timings["server_total"]["p99_ms"]
    assert "per model" in out and "client overhead ms p50/p99" in out
    meta = report["meta"]
    assert meta["schema_version"] == 1 and meta["parameters"]["rate"] == 300.0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", meta["started_at"])
    assert meta["started_at"] <= meta["finished_at"]
    assert meta["command"].startswith("python -m bot load --server")
    snapshots = report["server_status"]
    for when in ("before", "after"):
        queues = {q["model"]: q for q in snapshots[when][status]["queues"]}
        assert "moving_average" in queues
    ran = lambda snap: int(  # noqa: E731
        {q["model"]: q for q in snap[status]["queues"]}["moving_average"]["requestsRun"]
    )
    assert (
        ran(snapshots["after"]) - ran(snapshots["before"]) >= models["moving_average"]["answered"]
    )
    assert [(t["source"], t["passed"]) for t in report["thresholds"]] == [
        ("--max-error-rate", True),
        ("p99_ms<5000", True),
        ("req_s>1", True),
        ("p50_ms<0.001", False),
        ("server_total_p99_ms{model=lstm_timeseries}<5000", True),
    ]
    assert "SLO broken: p50_ms" in out and "thresholds" in out and "failed" in out
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(report))
    # The same server against itself: no regression at a generous tolerance.
    code, again, out = run_bot(
        tmp_path,
        f"load --server {server} --duration 1.5 --rate 300 --compare {baseline} "
        "--tolerance 1000% --compare-figures req_s,error_rate",
    )
    assert code == 0, out
    assert again["server_status"]["note"] == "no --status-url: the servers' /status was not read"
    assert [row["figure"] for row in again["compare"]["rows"]] == ["error_rate", "req_s"]
    assert "against" in out and "req_s" in out
    # A baseline that answered ten times faster: p50 regressed, exit 3.
    report["latency"] = {k: v / 10 for k, v in report["latency"].items()}
    baseline.write_text(json.dumps(report))
    code, again, out = run_bot(
        tmp_path, f"load --server {server} --duration 1.5 --rate 300 --compare {baseline}"
    )
    assert code == 3, out
    assert "p50_ms" in again["compare"]["regressions"]
    assert "regression against" in out and "p50_ms" in out
    code, _, out = run_bot(tmp_path, f"concurrency --server {server} --compare {baseline}")
    assert code == 2 and "a load report, this is concurrency" in out


def test_stages_ramp_linearly_and_schedule_every_request_exactly() -> None:
    stages = parse_stages("10s:1000,30s:5000,500ms:5000,10s:0")
    assert stages.duration_s == 50.5
    assert [stages.rate(t) for t in (0, 5, 10, 25, 40, 40.25, 45.5, 99)] == pytest.approx(
        [0, 500, 1000, 3000, 5000, 5000, 2500, 0]
    )
    # 10 s up to 1,000 (5,000 requests), 30 s up to 5,000 (90,000), 0.5 s held, 10 s down
    assert stages.total(10) == pytest.approx(5_000)
    assert stages.total(99) == pytest.approx(5_000 + 90_000 + 2_500 + 25_000)
    assert stages.time_of(5_000) == pytest.approx(10.0)
    assert stages.scaled(0.5).total(10) == pytest.approx(2_500)
    for bad in ("10:1000,x", "10q:5", "0s:5", "-1s:5", "5s:-3"):
        with pytest.raises(Exception, match="bad stage"):
            parse_stages(bad)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.01, 100), st.floats(0, 10_000)), min_size=1, max_size=5).filter(
        lambda stages: sum(s * r for s, r in stages) > 1
    ),
    st.floats(0, 1),
)
# A tiny request count on a rising ramp: 4 a n once underflowed to 0 and put it past the stage.
@example(stages=[(1.0, 5e-324), (0.5, 0.125), (1.0, 1.0)], share=5e-324)
def test_a_request_s_scheduled_time_inverts_the_integral(
    stages: list[tuple[float, float]], share: float
) -> None:
    shape = Stages(tuple(stages))
    n = share * shape.total(shape.duration_s)
    t = shape.time_of(n)
    assert 0 <= t <= shape.duration_s + 1e-9
    assert shape.total(t) == pytest.approx(n, rel=1e-6, abs=1e-6)


def test_stages_flags(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["load", "--stages", "1s:10,2s:20"])
    assert args.duration == 3.0 and parameters(args)["stages"][1] == {
        "seconds": 2.0,
        "target_rate": 20.0,
    }
    assert parse_args(["load"]).duration == 10.0
    for argv, message in (
        (["load", "--stages", "1s:10", "--rate", "5"], "--stages replaces --rate"),
        (["load", "--stages", "1s:10", "--duration", "5"], "--stages sets the duration (1 s)"),
    ):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err


def test_stages_and_a_concurrency_sweep_against_the_daemon(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    server = f"127.0.0.1:{daemon.tcp_port}"
    code, report, out = run_bot(
        tmp_path, f"load --server {server} --stages 1s:200,1s:200,0.5s:0 --warmup 0"
    )
    assert code == 0, out
    assert report["duration_s"] == 2.5
    # 0 -> 200 req/s in 1 s (100 requests), 200 for 1 s, 200 -> 0 in 0.5 s (50)
    assert 340 <= report["sent"] <= 351 and report["sent"] == report["answered"]
    targets = [row["target_rate"] for row in report["series"]]
    assert targets[0] == pytest.approx(200, abs=5) and targets[1] == pytest.approx(200, abs=5)
    per_second = [row["sent"] for row in report["series"]]
    assert per_second[0] == pytest.approx(100, abs=3) and per_second[1] == pytest.approx(200, abs=3)
    plot = tmp_path / "sweep.png"
    code, report, out = run_bot(
        tmp_path, f"concurrency --server {server} --sweep 20,60 --plot {plot}"
    )
    assert code == 0, out
    assert [(r["connections"], r["served"]) for r in report["sweep"]] == [(20, 20), (60, 60)]
    assert report["served"] == report["connections"] == 80
    assert all(r["first_reply_p99_ms"] >= r["first_reply_p50_ms"] > 0 for r in report["sweep"])
    assert report["timeline"][-1]["established"] == report["timeline"][-1]["first_replies"] == 60
    assert "concurrency sweep" in out and plot.stat().st_size > 20_000


def test_payload_flags_shape_every_request_and_its_expected_answer() -> None:
    assert config_setting("window_size=20") == ("*", "window_size", 20)
    assert config_setting("lstm_timeseries.norm_std=0.5") == ("lstm_timeseries", "norm_std", 0.5)
    assert config_setting("m.include_trend=TRUE") == ("m", "include_trend", True)
    assert config_setting("m.mode=fast") == ("m", "mode", "fast")
    for bad in ("window_size", "=3", "m.=3", "k="):
        with pytest.raises(Exception, match="expected"):
            config_setting(bad)
    args = parse_args(
        shlex.split(
            "load --models moving_average,lstm_timeseries --series-length 100 --raw-values "
            "--config moving_average.window_size=20 --config lstm_timeseries.forecast_steps=8"
        )
    )
    specs = request_mix(args.models[0], weights=args.models[1], payload=payload_of(args))
    ma = next(s for s in specs if s.model == "moving_average" and not s.config["include_trend"])
    lstm = next(s for s in specs if s.model == "lstm_timeseries")
    assert len(ma.values) == len(lstm.values) == 100
    assert ma.config["window_size"] == 20 and ma.expected is not None
    assert ma.expected[0] == pytest.approx(sum(ma.values[-20:]) / 20)
    assert lstm.config["forecast_steps"] == 8 and lstm.expected_len == 8
    tensor = ma.envelope(7).infer_request.input
    assert not tensor.values and struct.unpack("<100f", tensor.raw_values) == pytest.approx(
        ma.values, rel=1e-6
    )
    default = request_mix(["moving_average", "lstm_timeseries"])
    assert [len(s.values) for s in default[:2]] == [64, 32] and not default[0].raw
    # a setting the server must refuse leaves the answer to the server (and the probe)
    args = parse_args(shlex.split("load --config window_size=0"))
    assert (
        request_mix(args.models[0], weights=args.models[1], payload=payload_of(args))[0].expected
        is None
    )
    with pytest.raises(SystemExit):
        parse_args(shlex.split("load --config lstm_timeseries.forecast_steps=8"))


def test_payload_flags_against_the_daemon(daemon: DaemonProcess, tmp_path: Path) -> None:
    server = f"127.0.0.1:{daemon.tcp_port}"
    code, report, out = run_bot(
        tmp_path,
        f"load --server {server} --duration 1 --warmup 0 --rate 200 --series-length 200 "
        "--raw-values --config moving_average.window_size=40 "
        "--config moving_average.forecast_steps=12",
    )
    assert code == 0, out
    assert report["wrong"] == 0 and report["answered"] == report["sent"] > 100
    assert report["payload"]["moving_average"] == {
        "values": 200,
        "raw_values": True,
        "config": {"forecast_steps": [12], "window_size": [40], "include_trend": [True, False]},
    }
    assert report["meta"]["parameters"]["config"] == [
        ["moving_average", "window_size", 40],
        ["moving_average", "forecast_steps", 12],
    ]
    code, _, out = run_bot(
        tmp_path, f"load --server {server} --duration 2 --config moving_average.window_size=0"
    )
    assert code == 2, out
    assert "refused the moving_average payload" in out and "INVALID_INPUT" in out
    assert "window_size" in out


CHROMIUM = "/usr/bin/chromium"


def _chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with no network, no profile of its own; its stdout."""
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_html_report_is_one_file_that_renders_in_headless_chromium(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    import matplotlib.image

    page = tmp_path / "report.html"
    code, report, out = run_bot(
        tmp_path,
        f"load --server 127.0.0.1:{daemon.tcp_port} --duration 4 --rate 300 "
        f"--models moving_average,lstm_timeseries --threshold 'p99_ms<5000' --html {page}",
    )
    assert code == 0 and report["exit_code"] == 0, out
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == 1
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing to fetch
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    for text in ("bot load", "SLO held", "Thresholds", "p99_ms &lt; 5000", "Per model"):
        assert text in dom, text
    assert "lstm_timeseries" in dom and "client overhead ms p50/p99" in dom
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,6000", page.as_uri())
    pixels = matplotlib.image.imread(shot)[..., :3]
    # matplotlib's first line colour (#1f77b4) only exists if the embedded plot rendered
    blue = (abs(pixels - [0x1F / 255, 0x77 / 255, 0xB4 / 255]).max(axis=-1) < 0.02).sum()
    assert blue > 500, blue
    assert (pixels.min(axis=-1) < 0.5).mean() > 0.005  # text and lines, not a blank page
