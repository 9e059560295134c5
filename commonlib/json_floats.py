"""float32 values as short JSON numbers that read back as exactly the same float32.

A protobuf ``float`` arrives in Python as the double holding that float32 exactly;
``json.dumps`` would print all of it (0.10000000149011612), and rounding to a fixed
number of decimals loses small values (1.23456784e-05 became 1.2e-05). Instead each
value is rounded to 6 significant digits, or 7, 8 or 9 when fewer would not lie safely
inside the float32's rounding interval, so a reader gets the same float32 bits whether
it parses straight to float32 or to double and then rounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# 9 significant digits always identify a float32; the check below makes it exact.
_DIGITS = ("%.6g", "%.7g", "%.8g", "%.9g")


def float32_short(value: float) -> float:
    """``value`` to 6-9 significant digits: a short decimal that reads back as its float32.

    ``value`` must be a float32 value held in a double (as protobuf gives it).
    """
    if value == 0.0 or not math.isfinite(value):
        return value
    mantissa, exponent = math.frexp(value)
    # Half the float32 gap next to value (the smaller one below a power of two; the
    # subnormals share the smallest normal spacing), less a sliver so that neither
    # the decimal nor the double nearest it can land on the midpoint.
    half_gap = math.ldexp(1.0, max(exponent, -125) - (26 if abs(mantissa) == 0.5 else 25))
    limit = half_gap - math.ldexp(half_gap, -20)
    for digits in _DIGITS:
        short = float(digits % value)
        if abs(short - value) < limit:
            return short
    return value


def float32_list(values: Iterable[float]) -> list[float]:
    """:func:`float32_short` of each value."""
    return [float32_short(v) for v in values]
