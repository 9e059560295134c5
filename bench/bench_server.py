"""Throughput and latency of the real daemon over loopback TCP, side by side in one run.

For each model and batching setting it starts the daemon, drives it with
pre-encoded pipelined requests from separate client processes, and prints
requests/s, p50/p99/p99.9 latency (hdrhistogram, merged exactly across client
processes), the batch-size histogram (from the server's Status), and the CPU
used by the server and by the clients.

The machines drift by up to 35 % over minutes and differ in speed, so the same run
also measures the bare reference servers of ``bench/reference_server.py`` (``echo``
and ``decode``) with the same client on the same shapes, before and after the daemon
cells (in mirrored order), and reports every daemon figure as a ratio to the decode
reference ("x decode-ref"), and the targets of issue #2 both absolute and as ratios.

    .venv/bin/python bench/bench_server.py            # the full matrix (~4 min)
    .venv/bin/python bench/bench_server.py --quick    # moving_average pipelined only
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from hdrh.histogram import HdrHistogram  # noqa: E402

from bot.blocking_client import BlockingClient  # noqa: E402
from commonlib.wire import pb  # noqa: E402

MODELS = {
    "moving_average": (64, {"forecast_steps": 5, "window_size": 5, "include_trend": True}),
    "lstm_timeseries": (32, {"forecast_steps": 5, "sequence_length": 10, "hidden_size": 64}),
}
RAW_LABEL = "default, raw_values"
PR_SET_PDEATHSIG = 1


def workers_label(workers: int) -> str:
    """The batching label of the rows run with server.workers = ``workers``."""
    return f"default, workers={workers}"


SHAPES = {"pipelined 4x16": (4, 16), "64 conns x1": (64, 1), "4 conns x1": (4, 1)}
DEFAULT_SHAPES = ["pipelined 4x16", "64 conns x1"]
"""The matrix's shapes; "4 conns x1" (one request in flight, wake-ups dominate) on request."""


@dataclass
class Result:
    """One measured cell of the matrix."""

    model: str
    batching: str
    shape: str
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    server_cpu: float
    client_cpu: float
    client_bound: bool
    batch_sizes: dict[int, int]


@dataclass
class Reference:
    """One measured cell of a bare reference server (moving_average frames)."""

    kind: str
    shape: str
    phase: str
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    server_cpu: float
    client_cpu: float
    client_bound: bool


# Issue #2's figures, measured on its (faster) machine: the bare servers' throughput
# and the daemon's targets. Only the ratios carry over to another machine.
ISSUE_ECHO_RPS = 450_000.0
ISSUE_DECODE_RPS = {"pipelined 4x16": (86_000 + 95_000) / 2, "64 conns x1": 43_000.0}
# A client process above this CPU share may be what limits the cell.
CLIENT_BOUND_CPU = 0.9


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the benchmark dies (Linux PR_SET_PDEATHSIG).

    A benchmark killed by a timeout or Ctrl-C would otherwise leave its servers
    running, and they would skew every later measurement on the machine.
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def batch_counts(ports: Sequence[int], model: str) -> dict[int, int]:
    """The batch-size histogram for ``model``, summed over the daemons on ``ports``."""
    total: Counter[int] = Counter()
    for port in ports:
        with BlockingClient("127.0.0.1", port) as client:
            status = client.request(pb.Envelope(request_id=1, get_status=pb.GetStatus())).status
        for queue in status.queues:
            if queue.model == model:
                total.update(dict(queue.batch_size_counts))
    return dict(total)


def daemon_processes(tmp: Path) -> tuple[list[int], list[int]]:
    """(pids, ports answering GetStatus) of the daemon started by start_daemon in ``tmp``.

    One process: its own pid and port. With server.workers: the supervisor and every
    worker (their CPU adds up), and each worker's own port (a connection to the shared
    port reaches only one worker's batchers).
    """
    info = json.loads((tmp / "ports.json").read_text())
    workers = info.get("workers") or []
    if not workers:
        return [info["pid"]], [info["tcp"]]
    return [info["pid"], *(w["pid"] for w in workers)], [w["ports"]["tcp"] for w in workers]


def start_daemon(
    tmp: Path,
    max_batch: int | None,
    server: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    sections: dict[str, Any] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the daemon with default config (or every model at max_batch_size, unshed).

    ``server``, ``batching`` and ``inference`` override keys of ``server`` (e.g.
    ``{"workers": 2}``), ``inference.batching`` and ``inference``; ``sections`` adds
    other top-level sections (e.g. ``{"cache": {"enabled": True}}``).
    """
    config: dict[str, Any] = {"udp": {"enabled": False}, "http": {"port": 0}, **(sections or {})}
    if server:
        config["server"] = server
    if inference:
        config["inference"] = dict(inference)
    if batching:
        config.setdefault("inference", {})["batching"] = batching
    if max_batch is not None:
        config.setdefault("inference", {})
        config["inference"] |= {
            "models": {
                # The unbatched cells measure batching alone: admission by queue delay pinned
                # off (the default), since with it on 64 in flight against one-request
                # batches is a standing queue, mostly answered BUSY instead of served.
                name: {"batching": {"max_batch_size": max_batch, "max_queue_delay_ms": 0.0}}
                | ({"settings": {"hidden_size": 64}} if name == "lstm_timeseries" else {})
                for name in MODELS
            }
        }
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    ports = tmp / "ports.json"
    ports.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiServer",
            "--config",
            str(path),
            "--port",
            "0",
            "--port-file",
            str(ports),
            "--log-level",
            "warn",
        ],
        cwd=ROOT,
        preexec_fn=die_with_parent,
    )
    deadline = time.monotonic() + 60
    while not ports.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("daemon did not start")
        time.sleep(0.05)
    return proc, int(json.loads(ports.read_text())["tcp"])


def load_client_command(port: int, model: str, args: argparse.Namespace, *extra: str) -> list[str]:
    """The command line of one bench/load_client.py process for ``model``.

    Pass ``--raw-values`` in ``extra`` to send the series as ``Tensor.raw_values``.
    """
    values, config = MODELS[model]
    return [
        sys.executable,
        str(ROOT / "bench" / "load_client.py"),
        "--port",
        str(port),
        "--model",
        model,
        "--values",
        str(values),
        "--config",
        json.dumps(config),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        *extra,
    ]


def interpolate(samples: list[tuple[float, float]], at: float) -> float:
    """The value of a sampled ``(time, value)`` series at time ``at`` (linear, clamped)."""
    if at <= samples[0][0]:
        return samples[0][1]
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        if at <= t1:
            return v0 + (v1 - v0) * (at - t0) / ((t1 - t0) or 1.0)
    return samples[-1][1]


def measure(
    port: int,
    pid: int | Sequence[int],
    model: str,
    shape: str,
    args: argparse.Namespace,
    status: bool = True,
    raw: bool = False,
    status_ports: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run the client processes against a running server; merged figures.

    ``args.client_processes`` processes share the shape's connections (each holds
    ``inflight`` requests per connection); their counts and histograms are summed,
    and the server's CPU (summed over ``pid`` when it lists several processes) is
    taken over the window all of them were measuring (the /proc counters are sampled
    while they run). ``status=False`` for a server without the daemon's Status (no
    batch-size histogram); ``status_ports``: where to ask for it (default ``port``).
    """
    pids = [pid] if isinstance(pid, int) else list(pid)
    asked = list(status_ports) if status_ports else [port]
    connections, inflight = SHAPES[shape]
    procs = max(1, min(args.client_processes, connections))
    per = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    before_batches = batch_counts(asked, model) if status else {}
    clients = [
        subprocess.Popen(
            load_client_command(
                port,
                model,
                args,
                "--connections",
                str(n),
                "--inflight",
                str(inflight),
                *(["--raw-values"] if raw else []),
            ),
            stdout=subprocess.PIPE,
        )
        for n in per
    ]
    samples: list[tuple[float, float]] = []
    while any(c.poll() is None for c in clients):
        samples.append((time.time(), sum(cpu_seconds(p) for p in pids)))
        time.sleep(0.05)
    samples.append((time.time(), sum(cpu_seconds(p) for p in pids)))
    outputs = [json.loads(c.communicate(timeout=120)[0]) for c in clients]
    merged = HdrHistogram(1, 60_000_000, 3)
    for out in outputs:
        merged.add(HdrHistogram.decode(out["histogram"]))
    after_batches = batch_counts(asked, model) if status else {}
    seconds = max(o["seconds"] for o in outputs)
    # The window every client was measuring in (or, if they did not overlap, all of them).
    w0, w1 = max(o["window"][0] for o in outputs), min(o["window"][1] for o in outputs)
    if w1 - w0 < 0.5 * seconds:
        w0, w1 = min(o["window"][0] for o in outputs), max(o["window"][1] for o in outputs)
    server_cpu = (interpolate(samples, w1) - interpolate(samples, w0)) / max(w1 - w0, 1e-9)
    per_process = [o["cpu_seconds"] / o["seconds"] for o in outputs]
    return {
        "rps": sum(o["ok"] for o in outputs) / seconds,
        "p50_ms": merged.get_value_at_percentile(50) / 1000,
        "p99_ms": merged.get_value_at_percentile(99) / 1000,
        "p999_ms": merged.get_value_at_percentile(99.9) / 1000,
        "errors": sum(o["errors"] for o in outputs),
        "server_cpu": server_cpu,
        "client_cpu": sum(o["cpu_seconds"] for o in outputs) / seconds,
        "client_bound": max(per_process) > CLIENT_BOUND_CPU,
        "batch_sizes": {
            size: count - before_batches.get(size, 0)
            for size, count in sorted(after_batches.items())
            if count - before_batches.get(size, 0)
        },
    }


def start_reference(tmp: Path, kind: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``bench/reference_server.py --kind kind``; the process and its port."""
    ports = tmp / f"reference-{kind}.json"
    ports.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "reference_server.py"),
            "--kind",
            kind,
            "--port-file",
            str(ports),
        ],
        cwd=ROOT,
        preexec_fn=die_with_parent,
    )
    deadline = time.monotonic() + 60
    while not ports.exists() or not ports.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"reference server {kind} did not start")
        time.sleep(0.05)
    return proc, int(json.loads(ports.read_text())["tcp"])


def measure_references(
    tmp: Path, cells: list[tuple[str, str]], phase: str, args: argparse.Namespace
) -> list[Reference]:
    """Measure each ``(kind, shape)`` in order, one reference server at a time."""
    results: list[Reference] = []
    i = 0
    while i < len(cells):
        kind = cells[i][0]
        proc, port = start_reference(tmp, kind)
        try:
            while i < len(cells) and cells[i][0] == kind:
                shape = cells[i][1]
                r = measure(port, proc.pid, "moving_average", shape, args, status=False)
                del r["batch_sizes"]
                ref = Reference(kind, shape, phase, **r)
                results.append(ref)
                print(
                    f"reference {kind:6} {phase:6}  {'':16} {shape:15} {ref.rps:9,.0f} req/s  "
                    f"p50 {ref.p50_ms:6.2f} ms  p99 {ref.p99_ms:6.2f} ms  err {ref.errors}  "
                    f"cpu server {ref.server_cpu:.2f} client {ref.client_cpu:.2f}"
                    + ("  CLIENT-BOUND" if ref.client_bound else ""),
                    flush=True,
                )
                i += 1
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return results


def reference_means(references: list[Reference]) -> dict[tuple[str, str], float]:
    """Mean req/s of each (kind, shape) over its phases."""
    sums: dict[tuple[str, str], list[float]] = {}
    for ref in references:
        sums.setdefault((ref.kind, ref.shape), []).append(ref.rps)
    return {key: sum(v) / len(v) for key, v in sums.items()}


def histogram_text(counts: dict[int, int]) -> str:
    """Batch sizes as 'size:share%' for the largest shares."""
    total = sum(counts.values()) or 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
    return " ".join(f"{size}:{100 * n / total:.0f}%" for size, n in sorted(top))


def find(results: list[Result], model: str, batching: str, shape: str) -> Result | None:
    """The daemon cell for (model, batching, shape), if it was measured."""
    for r in results:
        if (r.model, r.batching, r.shape) == (model, batching, shape):
            return r
    return None


def matrix_text(
    results: list[Result], references: list[Reference], means: dict[tuple[str, str], float]
) -> str:
    """The matrix as a Markdown table: reference rows, then the daemon's with ratios."""
    lines = [
        "| server | batching / phase | shape | req/s | x decode-ref | p50 ms | p99 ms "
        "| p99.9 ms | err | server CPU | client CPU | batch sizes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for ref in references:
        decode = means.get(("decode", ref.shape))
        ratio = f"{ref.rps / decode:.2f}" if decode else "-"
        bound = " (client-bound)" if ref.client_bound else ""
        lines.append(
            f"| reference {ref.kind} | {ref.phase} | {ref.shape} | {ref.rps:,.0f} | {ratio} "
            f"| {ref.p50_ms:.2f} | {ref.p99_ms:.2f} | {ref.p999_ms:.2f} | {ref.errors} "
            f"| {ref.server_cpu:.2f} | {ref.client_cpu:.2f}{bound} | |"
        )
    for (kind, shape), rps in sorted(means.items()):
        phases = [r.rps for r in references if (r.kind, r.shape) == (kind, shape)]
        if len(phases) > 1:
            spread = (max(phases) - min(phases)) / rps
            lines.append(
                f"| reference {kind} | mean (spread {spread:.0%}) | {shape} | {rps:,.0f} "
                f"| | | | | | | | |"
            )
    for r in results:
        decode = means.get(("decode", r.shape))
        ratio = f"**{r.rps / decode:.2f}**" if decode else "-"
        bound = " (client-bound)" if r.client_bound else ""
        lines.append(
            f"| {r.model} | {r.batching} | {r.shape} | {r.rps:,.0f} | {ratio} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.p999_ms:.2f} | {r.errors} "
            f"| {r.server_cpu:.2f} | {r.client_cpu:.2f}{bound} | {histogram_text(r.batch_sizes)} |"
        )
    return "\n".join(lines)


def targets(
    results: list[Result], means: dict[tuple[str, str], float], label: str = "default"
) -> list[dict[str, Any]]:
    """Issue #2's targets for the rows labelled ``label``, absolute and as ratios (this run).

    Throughput targets become ratios to the decode reference of the same shape, with
    the issue's own decode-reference figures as the denominators; latency targets are
    absolute, shown also scaled by this machine's speed relative to the issue's
    (decode reference pipelined here / there) as an estimate.
    """
    pipe, conns = "pipelined 4x16", "64 conns x1"
    speed = means[("decode", pipe)] / ISSUE_DECODE_RPS[pipe] if ("decode", pipe) in means else None
    out: list[dict[str, Any]] = []

    def throughput(name: str, model: str, shape: str, target: float) -> None:
        cell = find(results, model, label, shape)
        ratio_target = target / ISSUE_DECODE_RPS[shape]
        row: dict[str, Any] = {
            "target": name,
            "absolute_target": target,
            "ratio_target": ratio_target,
            "measured": None,
            "ratio": None,
            "absolute_met": None,
            "ratio_met": None,
        }
        if cell is not None:
            row |= {"measured": cell.rps, "absolute_met": cell.rps >= target}
            decode = means.get(("decode", shape))
            if decode:
                row |= {"ratio": cell.rps / decode, "ratio_met": cell.rps / decode >= ratio_target}
        out.append(row)

    def latency(name: str, model: str, limit_ms: float) -> None:
        cell = find(results, model, label, pipe)
        row: dict[str, Any] = {
            "target": name,
            "absolute_target": limit_ms,
            "measured": None,
            "absolute_met": None,
            "scaled": None,
            "scaled_met": None,
        }
        if cell is not None:
            row |= {"measured": cell.p99_ms, "absolute_met": cell.p99_ms < limit_ms}
            if speed:
                row |= {"scaled": cell.p99_ms * speed, "scaled_met": cell.p99_ms * speed < limit_ms}
        out.append(row)

    throughput("moving_average >= 50,000 req/s pipelined", "moving_average", pipe, 50_000)
    latency("moving_average p99 < 5 ms pipelined", "moving_average", 5.0)
    throughput("moving_average >= 25,000 req/s at 64 conns x1", "moving_average", conns, 25_000)
    throughput("lstm_timeseries >= 20,000 req/s pipelined", "lstm_timeseries", pipe, 20_000)
    latency("lstm_timeseries p99 < 10 ms pipelined", "lstm_timeseries", 10.0)
    if label != "default":
        return out  # max_batch_size=1 runs in one process: compare it with "default" only
    batched = find(results, "lstm_timeseries", "default", pipe)
    single = find(results, "lstm_timeseries", "max_batch_size=1", pipe)
    row: dict[str, Any] = {
        "target": "lstm_timeseries batched >= 5x its max_batch_size=1 (pipelined)",
        "ratio_target": 5.0,
        "ratio": None,
        "ratio_met": None,
    }
    if batched and single and single.rps:
        row |= {"ratio": batched.rps / single.rps, "ratio_met": batched.rps / single.rps >= 5}
    out.append(row)
    return out


def verdict(met: bool | None) -> str:
    """'met' / '**not met**' / 'not measured'."""
    return "not measured" if met is None else ("met" if met else "**not met**")


def targets_text(rows: list[dict[str, Any]], means: dict[tuple[str, str], float]) -> str:
    """The targets as a Markdown table, each absolute and as its ratio."""
    lines = []
    pipe = "pipelined 4x16"
    if ("decode", pipe) in means:
        lines.append(
            f"This machine vs the issue's: decode reference pipelined "
            f"{means[('decode', pipe)]:,.0f} / {ISSUE_DECODE_RPS[pipe]:,.0f} = "
            f"x{means[('decode', pipe)] / ISSUE_DECODE_RPS[pipe]:.2f}"
            + (
                f", echo reference pipelined {means[('echo', pipe)]:,.0f} / "
                f"{ISSUE_ECHO_RPS:,.0f} = x{means[('echo', pipe)] / ISSUE_ECHO_RPS:.2f}"
                if ("echo", pipe) in means
                else ""
            )
            + "."
        )
        lines.append("")
    lines += [
        "| target | absolute (issue's machine) | as a ratio (this run) |",
        "|---|---|---|",
    ]
    for row in rows:
        name = row["target"]
        if "scaled" in row:
            measured = row["measured"]
            absolute = (
                f"p99 {measured:.2f} ms vs < {row['absolute_target']:.0f} ms: "
                f"{verdict(row['absolute_met'])}"
                if measured is not None
                else "not measured"
            )
            if measured is None:
                scaled = "not measured"
            elif row["scaled"] is None:
                scaled = "no decode reference to scale by"
            else:
                scaled = (
                    f"scaled to the issue's machine (x{row['scaled'] / measured:.2f}): "
                    f"~{row['scaled']:.2f} ms, {verdict(row['scaled_met'])} (estimate)"
                )
            lines.append(f"| {name} | {absolute} | {scaled} |")
        elif "absolute_target" in row:
            measured = row["measured"]
            absolute = (
                f"{measured:,.0f} vs {row['absolute_target']:,.0f} req/s: "
                f"{verdict(row['absolute_met'])}"
                if measured is not None
                else "not measured"
            )
            ratio = (
                f"{row['ratio']:.2f} vs >= {row['ratio_target']:.2f} x decode-ref: "
                f"{verdict(row['ratio_met'])}"
                if row["ratio"] is not None
                else f"target {row['ratio_target']:.2f} x decode-ref: not measured"
            )
            lines.append(f"| {name} | {absolute} | {ratio} |")
        else:
            ratio = (
                f"{row['ratio']:.1f}x vs >= {row['ratio_target']:.0f}x: {verdict(row['ratio_met'])}"
                if row["ratio"] is not None
                else "not measured"
            )
            lines.append(f"| {name} | (a ratio already) | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    """Run the matrix (references before and after) and print tables (and optionally JSON)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="load client processes per cell, sharing its connections (the machine has "
        "2 cores: more processes compete with the server)",
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=list(SHAPES))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="moving_average, pipelined, default batching (+ the decode reference, pipelined)",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the reference servers (no ratios)"
    )
    parser.add_argument(
        "--reference-passes",
        type=int,
        choices=[1, 2],
        default=2,
        help="measure the references before the daemon only (1) or before and after (2)",
    )
    parser.add_argument(
        "--raw-values",
        action="store_true",
        help=f"also run the default batching with the series sent as Tensor.raw_values "
        f"(rows labelled '{RAW_LABEL}')",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[2],
        help="also run the default batching with server.workers=N, one port served by N "
        "processes (rows labelled 'default, workers=N'); default: 2; none: --workers",
    )
    parser.add_argument(
        "--gil-switch-interval-ms",
        type=float,
        help="the daemon's inference.gil_switch_interval_ms (default: the config's)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.models, args.shapes = ["moving_average"], ["pipelined 4x16"]
    settings: list[tuple[str, int | None, int]] = [("default", None, 1)]
    if args.raw_values:
        settings.append((RAW_LABEL, None, 1))
    settings += [(workers_label(n), None, n) for n in args.workers if n > 1]
    if not args.quick:
        settings.append(("max_batch_size=1", 1, 1))
    kinds = [] if args.no_reference else (["decode"] if args.quick else ["echo", "decode"])
    cells = [(kind, shape) for kind in kinds for shape in args.shapes]
    results: list[Result] = []
    references: list[Reference] = []
    with tempfile.TemporaryDirectory() as tmp:
        references += measure_references(Path(tmp), cells, "before", args)
        for label, max_batch, workers in settings:
            proc, port = start_daemon(
                Path(tmp),
                max_batch,
                {"workers": workers},
                inference=None
                if args.gil_switch_interval_ms is None
                else {"gil_switch_interval_ms": args.gil_switch_interval_ms},
            )
            pids, status_ports = daemon_processes(Path(tmp))
            try:
                for model in args.models:
                    for shape in args.shapes:
                        r = measure(
                            port,
                            pids,
                            model,
                            shape,
                            args,
                            raw=label == RAW_LABEL,
                            status_ports=status_ports,
                        )
                        results.append(Result(model, label, shape, **r))
                        print(
                            f"{model:16} {label:17} {shape:15} {r['rps']:9,.0f} req/s  "
                            f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                            f"p99.9 {r['p999_ms']:6.2f} ms  err {r['errors']}  "
                            f"cpu server {r['server_cpu']:.2f} client {r['client_cpu']:.2f}  "
                            f"batches {histogram_text(r['batch_sizes'])}"
                            + ("  CLIENT-BOUND" if r["client_bound"] else ""),
                            flush=True,
                        )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        if args.reference_passes == 2:
            # Mirrored order, so each reference's mean is centred on the daemon cells.
            references += measure_references(Path(tmp), cells[::-1], "after", args)
    means = reference_means(references)
    rows = targets(results, means)
    by_label = {"default": rows} | {
        workers_label(n): targets(results, means, workers_label(n)) for n in args.workers if n > 1
    }
    print()
    print(matrix_text(results, references, means))
    for label, label_rows in by_label.items():
        print()
        print(f"Targets, {label}:" if label != "default" else "Targets, one process:")
        print()
        print(targets_text(label_rows, means))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "daemon": [r.__dict__ for r in results],
                    "reference": [r.__dict__ for r in references],
                    "reference_mean": [
                        {"kind": kind, "shape": shape, "rps": rps}
                        for (kind, shape), rps in sorted(means.items())
                    ],
                    "issue_reference": {"echo": ISSUE_ECHO_RPS, "decode": ISSUE_DECODE_RPS},
                    "targets": rows,
                    "targets_by_label": by_label,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
