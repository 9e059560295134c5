"""k6-style thresholds on any figure: ``--threshold 'p99_ms<10'``.

A threshold is ``FIGURE OP NUMBER`` with OP one of ``<``, ``<=``, ``>``, ``>=`` and
an optional ``%`` on the number (``error_rate<1%`` is ``error_rate<0.01``); FIGURE
is a name of bot/figures.py, per model with a tag (``p99_ms{model=lstm_timeseries}``).
The SLO flags are thresholds too: ``--slo-p99-ms X`` is ``p99_ms<=X``,
``--max-error-rate X`` is ``error_rate<=X``, ``--max-udp-loss X`` is ``udp_loss<=X``
and ``--max-rss-slope-mib-per-h X`` is ``rss_slope_mib_per_h<=X``; each one is listed
in the report's ``thresholds`` with the flag it came from.
"""

from __future__ import annotations

import argparse
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.figures import figures, kind_of, show, split_name

_OPS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "<=": (operator.le, ">"),
    ">=": (operator.ge, "<"),
    "<": (operator.lt, ">="),
    ">": (operator.gt, "<="),
}
_EXPR = re.compile(
    r"^\s*(?P<name>[^<>={}\s]+(?:\{[^{}]*\})?)\s*(?P<op><=|>=|<|>)\s*(?P<num>[^%\s]+)(?P<pct>%?)\s*$"
)

# SLO flag -> (figure, label in the verdict)
SUGAR = {
    "slo_p99_ms": ("p99_ms", "p99"),
    "max_error_rate": ("error_rate", "error rate"),
    "max_udp_loss": ("udp_loss", "UDP loss"),
    "max_rss_slope_mib_per_h": ("rss_slope_mib_per_h", "RSS slope"),
}


@dataclass(frozen=True)
class Threshold:
    """One limit on one figure."""

    figure: str
    op: str
    limit: float
    source: str  # the expression as given, or the SLO flag it came from
    label: str = ""  # the name in the verdict (default: the figure)

    def judge(self, value: float | None) -> tuple[bool, str]:
        """(passed, the clause the verdict shows); no value fails."""
        name = self.label or self.figure
        if value is None:
            return False, f"{name}: no value to judge (limit {self.op} {self.shown_limit()})"
        test, negation = _OPS[self.op]
        passed = test(value, self.limit)
        shown_op = self.op if passed else negation
        return passed, f"{name} {show(self.figure, value)} {shown_op} {self.shown_limit()}"

    def shown_limit(self) -> str:
        """The limit with the figure's unit."""
        return show(self.figure, self.limit)

    def to_json(self) -> dict[str, Any]:
        """The threshold as given (no verdict)."""
        return {"figure": self.figure, "op": self.op, "limit": self.limit, "source": self.source}


def parse_threshold(text: str) -> Threshold:
    """``p99_ms<10`` -> Threshold; argparse.ArgumentTypeError on a bad expression."""
    match = _EXPR.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"bad threshold {text!r}: expected FIGURE<NUMBER (or <=, >, >=), e.g. 'p99_ms<10'"
        )
    try:
        split_name(match["name"])
        limit = float(match["num"])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad threshold {text!r}: {exc}") from None
    if match["pct"]:
        limit /= 100.0
    return Threshold(match["name"], match["op"], limit, text.strip())


def scenario_problem(threshold: Threshold, args: argparse.Namespace) -> str | None:
    """Why ``threshold`` cannot be judged in this run (None: it can)."""
    base, model = split_name(threshold.figure)
    kind = kind_of(threshold.figure)
    if kind.scenarios is not None and args.scenario not in kind.scenarios:
        return (
            f"--threshold {threshold.source!r}: {base} is not measured by {args.scenario} "
            f"(only by {', '.join(kind.scenarios)})"
        )
    if kind.needs == "--udp-listen" and getattr(args, "udp_listen", None) is None:
        return f"--threshold {threshold.source!r}: {base} needs --udp-listen PORT"
    if model is not None:
        if args.scenario == "streams":
            return f"--threshold {threshold.source!r}: streams has no per-model figures"
        if model not in args.models[0]:
            return (
                f"--threshold {threshold.source!r}: {model!r} is not in --models "
                f"({', '.join(args.models[0])})"
            )
    return None


def _sugar_applies(flag: str, args: argparse.Namespace) -> bool:
    """Whether an SLO flag judges the whole run (stress and find-max judge each step)."""
    if args.scenario == "stress":
        return False
    if args.scenario == "streams":
        return flag == "slo_p99_ms" and not args.find_max
    return True


def thresholds_of(args: argparse.Namespace) -> list[Threshold]:
    """The run's thresholds: the SLO flags that were given, then every --threshold."""
    out = []
    for flag, (figure, label) in SUGAR.items():
        value = getattr(args, flag, None)
        if value is not None and _sugar_applies(flag, args):
            source = "--" + flag.replace("_", "-")
            out.append(Threshold(figure, "<=", float(value), source, label))
    return out + list(getattr(args, "threshold", None) or [])


def judge_thresholds(report: dict[str, Any], thresholds: list[Threshold]) -> list[dict[str, Any]]:
    """Each threshold with the run's value and whether it passed (the report's list)."""
    values = figures(report)
    out = []
    for threshold in thresholds:
        value = values.get(threshold.figure)
        passed, clause = threshold.judge(value)
        out.append({**threshold.to_json(), "value": value, "passed": passed, "clause": clause})
    return out
