"""Exact sums of doubles, as columns: the arithmetic behind every windowed mean. No I/O.

A mean over a window is the correctly rounded sum of its values divided by their count, whatever
the order in which values arrived or left (docs/contract.md §2: the stream, a backfill and the
oracle agree to the last bit). Floating-point running sums cannot promise that; integers can.

Every value a mean sees is held as an integer number of 2**-64 units, split into three 40-bit
limbs (`to_limbs`). Adding and removing values is then integer addition on int64 columns, exact
and order-free, with numpy's `cumsum` for a batch at a time; limbs are carried (`normalise`) so
none grows without bound. `to_double` rounds a total back to the nearest double, once.

A value outside that grid (below 2**-64, at or above 2**56, or with bits below 2**-64) is "odd":
`to_limbs` flags it and the engine keeps that entity's sum as a Python integer in units of
2**-1074 (every finite double is a whole number of those), through `odd_units` and `odd_double`.
Python's `int / int` is correctly rounded, so both paths give the same double.
"""

from __future__ import annotations

import numpy as np

SCALE = 64  # a limb total X stands for X * 2**-SCALE
LIMB_BITS = 40
LIMBS = 3
_MASK = (1 << LIMB_BITS) - 1
_LOW = 2.0**-SCALE
_HIGH = 2.0 ** (LIMBS * LIMB_BITS - SCALE)
_TOP = 2.0 ** (SCALE - 2 * LIMB_BITS)
_STEP = 2.0**LIMB_BITS
ODD_SCALE = 1074  # 2**-1074: the smallest subnormal double; every double is a multiple of it


def to_limbs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values (float64, >= 0) as limbs, shape (n, 3), lowest first; and which are odd.

    Each step is an exact floating-point operation (scaling by a power of two, or dropping the
    integer part of a number), so the limbs hold the value exactly when it is not odd.
    """
    top = values * _TOP
    high = np.floor(top)
    middle_part = (top - high) * _STEP
    middle = np.floor(middle_part)
    low_part = (middle_part - middle) * _STEP
    low = np.floor(low_part)
    odd = ~((values >= _LOW) & (values < _HIGH) & (low_part == low))
    limbs = np.empty((len(values), LIMBS), dtype=np.int64)
    limbs[:, 0] = np.where(odd, 0, low)
    limbs[:, 1] = np.where(odd, 0, middle)
    limbs[:, 2] = np.where(odd, 0, high)
    return limbs, odd


def normalise(limbs: np.ndarray) -> np.ndarray:
    """The same totals with the lower limbs carried into [0, 2**40) (in place; returned)."""
    for i in range(LIMBS - 1):
        carry = limbs[:, i] >> LIMB_BITS  # arithmetic shift: floor division, also for negatives
        limbs[:, i] &= _MASK
        limbs[:, i + 1] += carry
    return limbs


def to_double(limbs: np.ndarray) -> np.ndarray:
    """Normalised limb totals, correctly rounded to doubles (in units of 1, not 2**-64).

    The total is a + b + c with a = l2*2**80, b = l1*2**40, c = l0, each exact as a double. TwoSum
    gives s + e = a + b exactly with s the rounded sum; e + c is exact (e is a multiple of 2**40
    below half an ulp of s, c < 2**40, and s < 2**105 for any total under 2**41); so s + (e + c),
    one rounding of the exact total, is the correctly rounded total.
    """
    a = limbs[:, 2].astype(np.float64) * (_STEP * _STEP)
    b = limbs[:, 1].astype(np.float64) * _STEP
    c = limbs[:, 0].astype(np.float64)
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return (s + (e + c)) * _LOW


def fits(limbs: np.ndarray) -> np.ndarray:
    """Which normalised totals `to_double` rounds exactly (totals below 2**41, as windowed bids)."""
    return (limbs[:, 2] >= 0) & (limbs[:, 2] < (1 << (105 - 2 * LIMB_BITS)))


def limbs_units(limbs: np.ndarray) -> int:
    """One normalised limb total as an exact Python integer in units of 2**-1074."""
    total = (int(limbs[2]) << (2 * LIMB_BITS)) + (int(limbs[1]) << LIMB_BITS) + int(limbs[0])
    return total << (ODD_SCALE - SCALE)


def odd_units(value: float) -> int:
    """A double as an exact Python integer in units of 2**-1074."""
    numerator, denominator = value.as_integer_ratio()  # denominator: a power of two
    return numerator * ((1 << ODD_SCALE) // denominator)


def odd_double(units: int) -> float:
    """An exact total in units of 2**-1074, correctly rounded (Python's int division is)."""
    return units / (1 << ODD_SCALE)
