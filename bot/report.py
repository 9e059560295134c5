"""The end of a run: the SLO verdict, a rich table, and the JSON report file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bot.breakdown import print_models
from bot.stats import strip_histograms
from bot.thresholds import SUGAR, Threshold


@dataclass(frozen=True)
class Check:
    """One SLO check that ran: what it compared and whether it held."""

    name: str
    detail: str
    held: bool


def _limit_check(flag: str, value: float, limit: float) -> Check:
    """An SLO flag's check: the flag is sugar for its threshold (bot/thresholds.py)."""
    figure, label = SUGAR[flag]
    threshold = Threshold(figure, "<=", limit, "--" + flag.replace("_", "-"), label)
    held, detail = threshold.judge(value)
    return Check(label, detail, held)


def slo_checks(
    report: dict[str, Any], slo_p99_ms: float | None, max_error_rate: float
) -> list[Check]:
    """Every check the run's flags and scenario call for, held or not.

    Wrong answers and replies to unknown request ids are always checked; a failover
    run also checks for lost or duplicated requests. A stress run breaks the SLO on
    purpose at its last step, so it is judged on whether any step held. A scenario
    adds its own clauses to the report as ``held_checks`` and ``broken_checks`` (the
    soak leak verdict, the UDP loss against --max-udp-loss).
    """
    checks = []
    if report.get("scenario") == "streams":
        checks.extend(_stream_checks(report, slo_p99_ms))
    elif report.get("scenario") == "stress":
        knee = report.get("knee_rate") or 0.0
        limits = report.get("step_slo")
        per_step = (
            f" (p99 <= {limits['p99_ms']:g} ms, errors <= {limits['max_error_rate']:.2%})"
            if limits
            else ""
        )
        detail = (
            f"steps held{per_step} up to {knee:,.0f} req/s"
            if knee
            else "the SLO broke at the first step: no knee"
        )
        checks.append(Check("stress knee", detail, bool(knee)))
    else:
        error_rate = (report["error_count"] + report["lost"]) / max(1, report["sent"])
        checks.append(_limit_check("max_error_rate", error_rate, max_error_rate))
        if slo_p99_ms is not None:
            checks.append(_limit_check("slo_p99_ms", report["latency"]["p99_ms"], slo_p99_ms))
    wrong, unexpected = report.get("wrong", 0), report.get("unexpected", 0)
    checks.append(Check("wrong answers", f"{wrong} wrong answers", not wrong))
    checks.append(
        Check("unexpected", f"{unexpected} replies to no outstanding request id", not unexpected)
    )
    if report.get("scenario") == "failover":
        lost, duplicates = report["lost"], report["duplicates"]
        detail = f"failover lost {lost}, duplicated {duplicates}"
        checks.append(Check("failover", detail, not (lost or duplicates)))
    # The scenario's own clauses (the soak leak verdict, the UDP loss).
    checks.extend(Check("scenario", detail, True) for detail in report.get("held_checks", []))
    checks.extend(Check("scenario", detail, False) for detail in report.get("broken_checks", []))
    return checks


def _stream_checks(report: dict[str, Any], slo_p99_ms: float | None) -> list[Check]:
    minimum = float(report["min_on_time"])
    if "max_characters" in report:
        best = int(report["max_characters"])
        detail = (
            f"find-max: {best:,} characters held (>= {minimum:.2%} on time"
            + (f", p99 <= {slo_p99_ms:g} ms)" if slo_p99_ms is not None else ")")
            if best
            else "find-max: no step held the SLO"
        )
        return [Check("find-max", detail, bool(best))]
    ratio = float(report["on_time_ratio"])
    held = ratio >= minimum
    detail = (
        f"on time {ratio:.3%} {'>=' if held else '<'} {minimum:.3%} "
        f"(served within {report['deadline_ms']:.1f} ms)"
    )
    checks = [Check("on time", detail, held)]
    if slo_p99_ms is not None:
        checks.append(_limit_check("slo_p99_ms", report["latency"]["p99_ms"], slo_p99_ms))
    return checks


def slo_verdict(
    report: dict[str, Any], slo_p99_ms: float | None, max_error_rate: float
) -> list[str]:
    """The broken SLO clauses (empty when the run passed); see :func:`slo_checks`."""
    return [c.detail for c in slo_checks(report, slo_p99_ms, max_error_rate) if not c.held]


def unchecked(
    report: dict[str, Any], slo_p99_ms: float | None, judged: Sequence[str] = ()
) -> list[str]:
    """What the run did not check for want of a flag (``judged``: the thresholds' figures)."""
    missing = []
    latency = {"p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"}
    if report.get("scenario") != "stress" and slo_p99_ms is None and not latency & set(judged):
        missing.append("latency (no --slo-p99-ms)")
    if (report.get("leak") or {}).get("verdict") == "not judged":
        missing.append("RSS slope (no --max-rss-slope-mib-per-h)")
    if (report.get("udp") or {}).get("max_loss", 0.0) is None:
        missing.append("UDP loss (no --max-udp-loss)")
    return missing


_LATENCY_LABEL = "latency ms p50/p90/p99/p99.9/max"


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _latency(lat: dict[str, float]) -> str:
    keys = ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms")
    return " / ".join(f"{lat[k]:.2f}" for k in keys)


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, value) rows of the end-of-run table."""
    duration = max(float(report.get("duration_s", 0.0)), 1e-9)
    warmup = float(report.get("warmup_s") or 0.0)
    label = _LATENCY_LABEL + (f" (after the {warmup:g} s warm-up)" if warmup else "")
    rows = [
        ("sent", _fmt(report["sent"])),
        ("answered", _fmt(report["answered"])),
        ("throughput", f"{report['answered'] / duration:,.0f} req/s over {duration:.1f} s"),
        (label, _latency(report["latency"])),
        ("errors", ", ".join(f"{k}: {v:,}" for k, v in sorted(report["errors"].items())) or "0"),
        ("lost", _fmt(report["lost"])),
        ("wrong answers", _fmt(report["wrong"])),
    ]
    if warmup:
        left_out = report["warmup_latency"]
        rows.insert(
            4,
            (
                "warm-up, left out of latency",
                f"{left_out['count']:,.0f} answers in the first {warmup:g} s, "
                f"p99 {left_out['p99_ms']:.2f} ms",
            ),
        )
    always = ("knee_rate", "served", "duplicates", "unexpected")
    for key in (
        "retried",
        "retried_by_code",
        "retries_given_up",
        "duplicates",
        "unexpected",
        "time_to_recover_s",
        "answered_by_server",
        "knee_rate",
        "knee_coarse_rate",
        "connections",
        "served",
        "rss_start_mib",
        "rss_end_mib",
        "rss_slope_mib_per_min",
        "rss_slope_second_half_mib_per_min",
        "fd_slope_per_min",
        "p50_drift_ms",
        "p99_drift_ms",
        "processes",
    ):
        if key in report and (report[key] or key in always):
            rows.append((key.replace("_", " "), _fmt(report[key])))
    leak = report.get("leak")
    if leak:
        slope = leak["rss_slope_mib_per_h"]
        limit = leak["max_rss_slope_mib_per_h"]
        rows.append(
            (
                "rss slope MiB/h (after warm-up): verdict",
                ("-" if slope is None else f"{slope:,.2f}")
                + ("" if limit is None else f" (max {limit:g})")
                + f": {leak['verdict']}",
            )
        )
    for key in ("connect_latency", "first_reply_latency"):
        if key in report:
            rows.append(
                (_LATENCY_LABEL.replace("latency", key.replace("_", " ")), _latency(report[key]))
            )
    udp = report.get("udp")
    if udp:
        rows.append(
            (
                "udp datagrams rcvd/lost/reord/dup",
                f"{udp['received']:,} / {udp['lost']:,} / {udp['reordered']:,} / "
                f"{udp['duplicates']:,}",
            )
        )
        missing = udp.get("results_missing")
        rows.append(
            (
                "udp results (missing vs answered)",
                f"{udp['results']:,}" + (f" ({missing:,} missing)" if missing is not None else ""),
            )
        )
        delay = udp["delay"]
        rows.append(("udp delay ms p50/p99", f"{delay['p50_ms']:.2f} / {delay['p99_ms']:.2f}"))
        rows.extend(udp_source_rows(udp))
    return rows


def udp_source_rows(udp: dict[str, Any]) -> list[tuple[str, str]]:
    """The worst jitter, and one row per sending server, and the re-subscriptions."""
    rows = [("udp jitter ms (RFC 3550, worst server)", f"{udp.get('jitter_ms', 0.0):.3f}")]
    for source, score in udp.get("per_source", {}).items():
        rows.append(
            (
                f"udp from {source}: rcvd/lost/reord/dup, jitter, p99",
                f"{score['received']:,} / {score['lost']:,} / {score['reordered']:,} / "
                f"{score['duplicates']:,}, {score['jitter_ms']:.3f} ms, "
                f"{score['delay']['p99_ms']:.2f} ms",
            )
        )
    for server, counts in udp.get("subscription", {}).get("per_server", {}).items():
        if counts.get("drops"):
            rows.append(
                (
                    f"udp subscription {server}: drops/attempts/resubscribed",
                    f"{counts['drops']} / {counts['resubscribe_attempts']} / "
                    f"{counts['resubscribed']}",
                )
            )
    return rows


def stream_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, value) rows of a streams run."""
    lead = report["seen_lead_ms"]
    phase = "not aligned (--no-align)"
    if report["aligned"]:
        phase = f"sent {report['final_lead_ms']:g} ms before each server tick"
        if report["lead_changes"]:
            phase += f" (from {report['lead_ms']:g} ms, {len(report['lead_changes'])} raises)"
        missed = report["ticks_missing_their_tick"] / max(1, report["ticks_judged"])
        phase += f"; {missed:.1%} of Ticks missed their tick"
    rows = [
        ("model", report["model"]),
        (
            "characters / connections",
            f"{report['characters']:,} / {report['connections']:,}",
        ),
        (
            "frames/s sent, server ticks/s",
            f"{report['hz']:g} / {report['server_tick_hz']:g}",
        ),
        (
            "frames sent (warm-up, not scored)",
            f"{report['frames']:,} ({report.get('warmup_frames', 0):,}: the first "
            f"{float(report.get('warmup_s') or 0.0):g} s)",
        ),
        ("observations scored", _fmt(report["observations_sent"])),
        (
            f"on time (within {report['deadline_ms']:.1f} ms)",
            f"{report['on_time_ratio']:.3%} ({report['on_time']:,})",
        ),
        (
            "late / never served / coalesced",
            f"{report['late']:,} / {report['unserved']:,} / {report['coalesced']:,}",
        ),
        ("observation -> output ms p50/p90/p99/p99.9/max", _latency(report["latency"])),
        ("phase", phase),
        (
            "lead the server saw ms p10/p50/p90",
            f"{lead['p10']:.2f} / {lead['p50']:.2f} / {lead['p90']:.2f}",
        ),
        ("bot send lag ms p50/p99", _pair(report["send_lag"])),
        ("server tick lag ms p50/p99", _pair(report["server_tick_lag"])),
        ("server step ms p50/p99", _pair(report["server_step"])),
        (
            "stream errors",
            ", ".join(f"{k}: {v:,}" for k, v in sorted(report["stream_errors"].items())) or "0",
        ),
        ("wrong output rows", _fmt(report["wrong_rows"])),
    ]
    counters = report.get("server_counters")
    if counters:
        rows.append(
            (
                "server ticks stepped / missed, coalesced",
                f"{counters.get('ticks_stepped', 0):,.0f} / {counters.get('ticks_missed', 0):,.0f}"
                f", {counters.get('coalesced', 0):,.0f}",
            )
        )
    udp = report.get("udp")
    if udp:
        rows.append(
            (
                "udp datagrams rcvd/lost/reord/dup",
                f"{udp['received']:,} / {udp['lost']:,} / {udp['reordered']:,} / "
                f"{udp['duplicates']:,}",
            )
        )
        rows.append(("udp snapshot delay ms p50/p99", _pair(udp["delay"])))
    if "max_characters" in report:
        rows.append(("find-max: most characters held", _fmt(report["max_characters"])))
    return rows


def _pair(lat: dict[str, float]) -> str:
    return f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f}"


def print_report(report: dict[str, Any], console: Console) -> None:
    """The end-of-run table (and the stress ramp, or the find-max steps)."""
    table = Table(title=f"bot {report['scenario']}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    streams = report["scenario"] == "streams"
    for name, value in stream_rows(report) if streams else summary_rows(report):
        table.add_row(name, value)
    console.print(table)
    print_models(report, console)
    if streams and report.get("steps"):
        search = Table(title="find-max steps", show_header=True)
        for column in ("characters", "on time", "p50 ms", "p99 ms", "send lag p99", "held"):
            search.add_column(column, justify="right")
        for step in report["steps"]:
            if "refused" in step:
                search.add_row(f"{step['characters']:,}", "[red]refused[/]", "", "", "", "no")
                continue
            search.add_row(
                f"{step['characters']:,}",
                f"{step['on_time_ratio']:.3%}",
                f"{step['p50_ms']:.2f}",
                f"{step['p99_ms']:.2f}",
                f"{step['send_lag_p99_ms']:.2f}",
                "yes" if step["held"] else "[red]no[/]",
            )
        console.print(search)
        return
    if report.get("steps"):
        ramp = Table(title="stress ramp", show_header=True)
        for column in ("target req/s", "achieved req/s", "p50 ms", "p99 ms", "errors", "held"):
            ramp.add_column(column, justify="right")
        ramp.add_column("limit broken")
        for step in report["steps"]:
            refine = " (refine)" if step.get("phase") == "refine" else ""
            ramp.add_row(
                f"{step['target_rate']:,.0f}{refine}",
                f"{step['achieved_rate']:,.0f}",
                f"{step['p50_ms']:.2f}",
                f"{step['p99_ms']:.2f}",
                f"{step['error_rate']:.2%}",
                "yes" if step["held"] else "[red]no[/]",
                "; ".join(step.get("broken", [])),
            )
        console.print(ramp)
    if report.get("sweep"):
        sweep = Table(title="concurrency sweep", show_header=True)
        for column in (
            "connections",
            "served",
            "connect p50/p99 ms",
            "first reply p50/p99 ms",
            "retried",
            "errors + lost",
        ):
            sweep.add_column(column, justify="right")
        for row in report["sweep"]:
            sweep.add_row(
                f"{row['connections']:,}",
                f"{row['served']:,}",
                f"{row['connect_p50_ms']:.2f} / {row['connect_p99_ms']:.2f}",
                f"{row['first_reply_p50_ms']:.2f} / {row['first_reply_p99_ms']:.2f}",
                f"{row['retried']:,}",
                f"{row['errors'] + row['lost']:,}",
            )
        console.print(sweep)
    for note in report.get("notes", [])[:10]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def write_json(report: dict[str, Any], path: Path) -> None:
    """The whole report, time series included (per-second histograms left out)."""
    path.write_text(json.dumps(strip_histograms(report), indent=1))
