"""The end of a run: the SLO verdict, a rich table, and the JSON report file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bot.stats import strip_histograms


def slo_verdict(
    report: dict[str, Any], slo_p99_ms: float | None, max_error_rate: float
) -> list[str]:
    """The broken SLO clauses (empty when the run passed).

    Wrong answers and replies to unknown request ids always fail a run; a failover
    run also fails on any lost or duplicated request. A stress run breaks the SLO
    on purpose at its last step, so it fails only when no step held.
    """
    broken = []
    sent = max(1, report["sent"])
    error_rate = (report["error_count"] + report["lost"]) / sent
    if error_rate > max_error_rate:
        broken.append(f"error rate {error_rate:.2%} > {max_error_rate:.2%}")
    if slo_p99_ms is not None and report["latency"]["p99_ms"] > slo_p99_ms:
        broken.append(f"p99 {report['latency']['p99_ms']:.2f} ms > {slo_p99_ms:.2f} ms")
    if report.get("scenario") == "stress":
        broken = []
        if not report.get("knee_rate"):
            broken.append("the SLO broke at the first step: no knee")
    broken.extend(report.get("broken_checks", []))  # the scenario's own (soak leak, UDP)
    if report.get("wrong"):
        broken.append(f"{report['wrong']} wrong answers")
    if report.get("unexpected"):
        broken.append(f"{report['unexpected']} replies to no outstanding request id")
    if report.get("scenario") == "failover" and (report["lost"] or report["duplicates"]):
        broken.append(f"failover lost {report['lost']}, duplicated {report['duplicates']}")
    return broken


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
    rows = [
        ("sent", _fmt(report["sent"])),
        ("answered", _fmt(report["answered"])),
        ("throughput", f"{report['answered'] / duration:,.0f} req/s over {duration:.1f} s"),
        (_LATENCY_LABEL, _latency(report["latency"])),
        ("errors", ", ".join(f"{k}: {v:,}" for k, v in sorted(report["errors"].items())) or "0"),
        ("lost", _fmt(report["lost"])),
        ("wrong answers", _fmt(report["wrong"])),
    ]
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


def print_report(report: dict[str, Any], console: Console) -> None:
    """The end-of-run table (and the stress ramp)."""
    table = Table(title=f"bot {report['scenario']}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in summary_rows(report):
        table.add_row(name, value)
    console.print(table)
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
    for note in report.get("notes", [])[:10]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def write_json(report: dict[str, Any], path: Path) -> None:
    """The whole report, time series included (per-second histograms left out)."""
    path.write_text(json.dumps(strip_histograms(report), indent=1))
