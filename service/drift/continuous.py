"""Methods on the empirical distribution functions of numerical values.

ks, wasserstein, ed (energy distance), anderson (Anderson-Darling k-sample) and
cramer_von_mises all compare the two empirical CDFs, so they depend only on the sorted
values, never on the order a sample presents them in. ks, anderson and cramer_von_mises
read counts and ranks off the cached sorted reference and the sorted window with
`searchsorted`; wasserstein reads the sorted reference's prefix sums at those ranks, and ed
hands the sorted reference to scipy.

KS's p-value follows `scipy.stats.ks_2samp` (exact below 10,000 values on each side,
Smirnov's asymptotic distribution above), so it equals what Evidently's `ks` returns.
Anderson-Darling follows `scipy.stats.anderson_ksamp` with midranks (what Evidently's
call gets) and Cramér-von Mises the copy of scipy's two-sample test that Evidently
ships; docs/drift-methods.md lists the inputs where Evidently errs and what is
returned instead.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats
from scipy.stats import _stats_py

from .base import ColumnKind, ColumnSample, DriftMethod, Verdict, ranks_in, register_preparation

# scipy's ks_2samp(method="auto") is exact while both samples have at most this many values.
_KS_MAX_EXACT_N = 10000


def ks_statistic(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[float, float]:
    """(max(F_ref - F_cur), max(F_cur - F_ref)) over every observed value, as ks_2samp.

    Between two consecutive window values the window CDF is constant and the reference
    CDF only grows, so the extremes of F_ref - F_cur over all points are reached at a
    window value or just before one: evaluating there gives the same pairs of counts,
    and so the same floating-point differences, that ks_2samp evaluates at every point.
    """
    n1, n2 = ref_sorted.shape[0], cur_sorted.shape[0]
    ref_right = np.searchsorted(ref_sorted, cur_sorted, side="right")
    ref_left = np.searchsorted(ref_sorted, cur_sorted, side="left")
    cur_right = np.searchsorted(cur_sorted, cur_sorted, side="right")
    cur_left = np.searchsorted(cur_sorted, cur_sorted, side="left")
    at = ref_right / n1 - cur_right / n2
    before = ref_left / n1 - cur_left / n2
    # Reference values below the first window value are covered by `before` at that
    # value (the window CDF is 0 there); those above the last by `at` at the last one.
    max_diff = max(float(at.max()), float(before.max()))
    min_diff = min(float(at.min()), float(before.min()))
    return max_diff, min_diff


def ks_pvalue(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> float:
    """Two-sided `scipy.stats.ks_2samp(ref, cur, method="auto").pvalue`."""
    n1, n2 = ref_sorted.shape[0], cur_sorted.shape[0]
    max_diff, min_diff = ks_statistic(ref_sorted, cur_sorted)
    min_s = min(max(-min_diff, 0.0), 1.0)
    d = min_s if min_s > max_diff else max_diff
    g = math.gcd(n1, n2)
    if max(n1, n2) <= _KS_MAX_EXACT_N:
        success, d, prob = _stats_py._attempt_exact_2kssamp(n1, n2, g, d, "two-sided")
        if success:
            return float(np.clip(prob, 0, 1))
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    prob = stats.distributions.kstwo.sf(d, np.round(en))
    return float(np.clip(prob, 0, 1))


def ks(ref: ColumnSample, cur: ColumnSample) -> float:
    return ks_pvalue(ref.sorted, cur.sorted)


def wasserstein_norm(ref: ColumnSample, cur: ColumnSample) -> float:
    """First Wasserstein distance divided by the reference's std (at least 0.001)."""
    norm = max(ref.std, 0.001)
    return wasserstein_distance(ref, cur) / norm


# Prefix sums of the sorted reference are kept at every other value only, as a double-double
# (hi in float64, lo in float32: the low part only needs a few digits): 6 bytes per reference
# value. A sum up to an odd index adds the one value after its block's start.
_BLOCK = 2


@register_preparation
def _prepare(ref: ColumnSample) -> None:
    if ref.kind is ColumnKind.NUMERICAL and ref.n:
        _prefix_blocks(ref)


def _prefix_blocks(ref: ColumnSample) -> tuple[float, np.ndarray, np.ndarray]:
    """(center, hi, lo): the sums of the sorted reference minus its median over its first
    0, 2, 4, … values, as a double-double pair (hi + lo), summed in long double.

    A difference of two such sums then carries an error relative to the difference
    itself, not to the whole column's sum: that is what keeps the distance within 1e-9
    of scipy's while the window side works in plain float64."""
    cache = ref.cache()
    if "prefix_blocks" not in cache:
        r = ref.sorted
        center = float(r[r.size // 2])
        blocks = -(-r.size // _BLOCK)
        padded = np.full(blocks * _BLOCK, center, dtype=np.longdouble)
        padded[:r.size] = r
        exact = np.zeros(blocks + 1, dtype=np.longdouble)
        np.cumsum((padded - np.longdouble(center)).reshape(blocks, _BLOCK).sum(axis=1), out=exact[1:])
        hi = exact.astype(np.float64)
        residual = exact - hi.astype(np.longdouble)
        # float32 keeps the residual to 7 digits, plenty beside hi, unless it would overflow
        small = bool(np.all(np.abs(residual) < 1e30))
        lo = residual.astype(np.float32 if small else np.float64)
        cache["prefix_blocks"] = (center, hi, lo)
    center, hi, lo = cache["prefix_blocks"]  # type: ignore[misc]
    return float(center), hi, lo


def wasserstein_distance(ref: ColumnSample, cur: ColumnSample) -> float:
    """`scipy.stats.wasserstein_distance(ref, cur)` in work proportional to the window.

    The distance is also the integral over u in [0, 1] of |Q_ref(u) - Q_cur(u)|, the two
    quantile functions. The window's quantile is its i-th distinct value w on a stretch
    (a, b] of u (a, b: the window's share of values below w, and up to it); the reference's
    passes w once, at s = (reference values <= w) / n, and with s' = s clipped to [a, b]
    the stretch contributes
        integral over (a, s'] of (w - Q_ref)  +  integral over (s', b] of (Q_ref - w)
        = w (2 s' - a - b) + G(a) + G(b) - 2 G(s'),
    where G(t), the integral of Q_ref over [0, t], is read off the prefix sums of the sorted
    reference (plus a fraction of the next value when t n is not whole). Positions are
    integers in units of 1 / (n m), so a, b and s' are exact; values are taken minus the
    reference's median, and the G differences over each short stretch are formed before they
    are added, so the result keeps the precision of the differences, not of whole-column sums.
    """
    r, n = ref.sorted, ref.n
    center, hi, lo = _prefix_blocks(ref)
    cum = np.cumsum(cur.unique_counts)
    m = int(cum[-1])
    ends = np.zeros(cum.size + 1, dtype=np.int64)
    np.multiply(cum, n, out=ends[1:])  # distinct value i holds u in (ends[i], ends[i + 1]] / (n m)
    cross = ranks_in(ref, cur) * m
    np.clip(cross, ends[:-1], ends[1:], out=cross)

    def integral(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n times the integral of (Q_ref - center) over u in [0, pos / (n m)], in three parts
        to subtract part by part: the block sum's double-double (hi, lo), and the rest (the
        value after the block, plus the fraction of the next value)."""
        k = pos // m
        part = r.take(k, mode="clip") - center  # k = n: the fraction is 0
        part *= (pos - k * m) / m
        tail = r[k - 1] - center  # k = 0 reads r[-1], and an even k adds nothing: zeroed here
        tail *= k & 1
        part += tail
        return hi[k >> 1], lo[k >> 1], part

    (h, low, rest), (hs, ls, rs) = integral(ends), integral(cross)
    spread = (((h[1:] - hs) - (hs - h[:-1])) + ((low[1:] - ls) - (ls - low[:-1]))
              + ((rest[1:] - rs) - (rs - rest[:-1])))
    pieces = spread / n + (cur.uniques - center) * ((2 * cross - ends[:-1] - ends[1:]) / (n * m))
    return float(pieces.sum())


def energy_distance(ref: ColumnSample, cur: ColumnSample) -> float:
    """`scipy.stats.energy_distance`: it sorts both samples, so the sorted reference serves."""
    return float(stats.energy_distance(ref.sorted, cur.values))


def _pooled_constant(ref: ColumnSample, cur: ColumnSample) -> bool:
    return bool(ref.sorted[0] == ref.sorted[-1] == cur.sorted[0] == cur.sorted[-1])


# Scholz & Stephens (1987), table 2: critical values b0 + b1/sqrt(m) + b2/m of the
# standardized statistic, for m = k - 1 = 1 (two samples), and their significance levels.
_AD_SIG = np.array([0.25, 0.1, 0.05, 0.025, 0.01, 0.005, 0.001])
_AD_CRITICAL = (np.array([0.675, 1.281, 1.645, 1.96, 2.326, 2.573, 3.085])
                + np.array([-0.245, 0.25, 0.678, 1.149, 1.822, 2.364, 3.615])
                + np.array([-0.105, -0.305, -0.362, -0.391, -0.396, -0.345, -0.154]))
_AD_FIT = np.polyfit(_AD_CRITICAL, np.log(_AD_SIG), 2)


def _anderson_midrank_statistic(ref: ColumnSample, cur: ColumnSample, pooled: np.ndarray) -> float:
    """A2akN of Scholz & Stephens eq. 7, as scipy's `_anderson_ksamp_midrank` computes it."""
    n_total = ref.n + cur.n
    left = (np.searchsorted(ref.sorted, pooled, "left") + np.searchsorted(cur.sorted, pooled, "left"))
    if n_total == pooled.size:
        lj: float | np.ndarray = 1.0
    else:
        right = (np.searchsorted(ref.sorted, pooled, "right")
                 + np.searchsorted(cur.sorted, pooled, "right"))
        lj = right - left
    bj = left + lj / 2.0
    a2 = 0.0
    for s in (ref.sorted, cur.sorted):
        s_right = s.searchsorted(pooled, side="right")
        mij = s_right.astype(float)
        mij -= (s_right - s.searchsorted(pooled, "left")) / 2.0
        inner = lj / float(n_total) * (n_total * mij - bj * s.size) ** 2 / (bj * (n_total - bj)
                                                                          - n_total * lj / 4.0)
        a2 += inner.sum() / s.size
    return float(a2 * ((n_total - 1.0) / n_total))


def anderson(ref: ColumnSample, cur: ColumnSample) -> float:
    """`scipy.stats.anderson_ksamp([ref, cur]).pvalue` (midrank variant; capped to [0.001, 0.25]).

    Textbook values where scipy errs: 1.0 when every value on both sides is the same
    (scipy: "needs more than one distinct observation"), NaN for fewer than 4 values in
    all (the variance of the statistic has (N-1)(N-2)(N-3) in its denominator; scipy
    gives NaN for 3 values and raises an IndexError for 2).
    """
    if _pooled_constant(ref, cur):
        return 1.0
    n_total, k = ref.n + cur.n, 2
    if n_total < 4:
        return math.nan
    pooled = np.union1d(ref.uniques, cur.uniques)
    a2kn = _anderson_midrank_statistic(ref, cur, pooled)
    h_sum = (1.0 / np.array([ref.n, cur.n])).sum()
    hs_cs = (1.0 / np.arange(n_total - 1, 1, -1)).cumsum()
    h = hs_cs[-1] + 1
    g = (hs_cs / np.arange(2, n_total)).sum()
    a = (4 * g - 6) * (k - 1) + (10 - 6 * g) * h_sum
    b = (2 * g - 4) * k**2 + 8 * h * k + (2 * g - 14 * h - 4) * h_sum - 8 * h + 4 * g - 6
    c = (6 * h + 2 * g - 2) * k**2 + (4 * h - 4 * g + 6) * k + (2 * h - 6) * h_sum + 4 * h
    d = (2 * h + 6) * k**2 - 4 * h * k
    sigmasq = (a * n_total**3 + b * n_total**2 + c * n_total + d) / (
        (n_total - 1.0) * (n_total - 2.0) * (n_total - 3.0))
    a2 = (a2kn - (k - 1)) / math.sqrt(sigmasq)
    if a2 < _AD_CRITICAL.min():
        return float(_AD_SIG.max())
    if a2 > _AD_CRITICAL.max():
        return float(_AD_SIG.min())
    return math.exp(np.polyval(_AD_FIT, a2))


def _cvm_u(ref: ColumnSample, cur: ColumnSample) -> float:
    """U of Anderson (1962) eq. 10 with midranks in the pooled sample, as Evidently's `_cvm_2samp`."""
    total = 0.0
    for own, other in ((ref.sorted, cur.sorted), (cur.sorted, ref.sorted)):
        below = np.searchsorted(own, own, "left") + np.searchsorted(other, own, "left")
        upto = np.searchsorted(own, own, "right") + np.searchsorted(other, own, "right")
        ranks = 0.5 * (upto + below + 1)
        total += own.size * np.sum((ranks - np.arange(1, own.size + 1)) ** 2)
    return float(total)


def _cvm_exact_pvalue(u: float, m: int, n: int) -> float:
    """Exact P(U >= u) by the recursion of Xiao, Gordon & Yakovlev (2006), in integers.

    Evidently's copy of this algorithm sizes its tables with `np.min_scalar_type`, so its
    counts are float16/float32 (imprecise) or unsigned integers (a casting error); this is
    scipy's corrected version, with int64 tables.
    """
    lcm = math.lcm(m, n)
    a, b = lcm // m, lcm // n
    mn = m * n
    zeta = lcm**2 * (m + n) * (6 * u - mn * (4 * mn - 1)) // (6 * mn**2)
    gs = [np.array([[0], [1]], dtype=np.int64)] + [np.empty((2, 0), dtype=np.int64) for _ in range(m)]
    for i in range(n + 1):
        next_gs = []
        tmp = np.empty((2, 0), dtype=np.int64)
        for v, g in enumerate(gs):
            vi, i0, i1 = np.intersect1d(tmp[0], g[0], return_indices=True)
            tmp = np.concatenate([np.stack([vi, tmp[1, i0] + g[1, i1]]),
                                  np.delete(tmp, i0, 1), np.delete(g, i1, 1)], 1)
            tmp[0] += (a * v - b * i) ** 2
            next_gs.append(tmp)
        gs = next_gs
    value, freq = gs[m]
    return float(np.sum(freq[value >= zeta]) / math.comb(m + n, m))


def _cdf_cvm_inf(x: float) -> float:
    """Limiting CDF of the Cramér-von Mises statistic (Csörgő & Faraway 1996, eq. 1.2)."""
    arr = np.asarray([x])
    tot, k = 0.0, 0
    while True:
        u = np.exp(special.gammaln(k + 0.5) - special.gammaln(k + 1)) / (np.pi**1.5 * np.sqrt(arr))
        y = 4 * k + 1
        q = y**2 / (16 * arr)
        z = u * np.sqrt(y) * np.exp(-q) * special.kv(0.25, q)
        tot = tot + z
        if not np.abs(z)[0] >= 1e-7:
            return float(tot[0])
        k += 1


# Evidently's `_cvm_2samp(method="auto")` is exact while both samples have at most this many values.
_CVM_MAX_EXACT_N = 20


def cramer_von_mises(ref: ColumnSample, cur: ColumnSample) -> float:
    """The two-sample Cramér-von Mises p-value of Evidently's `_cvm_2samp` (method "auto").

    Textbook values where Evidently errs: 1.0 when every value on both sides is the same
    (with sides of different sizes Evidently's midrank formula reports p near 0, drift),
    NaN with fewer than two values on a side (Evidently raises), and the exact p-value in
    integer arithmetic while both sides have at most 20 values (Evidently's exact tables
    are float16/float32, good to 3-7 digits, or raise a casting error).
    """
    if _pooled_constant(ref, cur):
        return 1.0
    nx, ny = ref.n, cur.n
    if nx < 2 or ny < 2:
        return math.nan
    u = _cvm_u(ref, cur)
    if max(nx, ny) <= _CVM_MAX_EXACT_N:
        return _cvm_exact_pvalue(u, nx, ny)
    k, n_total = nx * ny, nx + ny
    t = u / (k * n_total) - (4 * k - 1) / (6 * n_total)
    et = (1 + 1 / n_total) / 6
    vt = (n_total + 1.0) * (4 * k * n_total - 3 * (nx**2 + ny**2) - 2 * k)
    vt = vt / (45 * n_total**2 * 4 * k)
    tn = 1 / 6 + (t - et) / np.sqrt(45 * vt)
    if tn < 0.003:
        return 1.0
    return float(max(0.0, 1.0 - _cdf_cvm_inf(tn)))


NUMERICAL = frozenset({ColumnKind.NUMERICAL})

METHODS = (
    DriftMethod("ks", "K-S p_value", NUMERICAL, 0.05, Verdict.P_VALUE_LE, ks,
                effect="ks_statistic"),
    DriftMethod("wasserstein", "Wasserstein distance (normed)", NUMERICAL, 0.1, Verdict.DISTANCE_GE,
                wasserstein_norm),
    DriftMethod("ed", "Energy-distance", NUMERICAL, 0.1, Verdict.DISTANCE_GT, energy_distance),
    DriftMethod("anderson", "Anderson-Darling", NUMERICAL, 0.1, Verdict.P_VALUE_LT, anderson,
                effect="ks_statistic"),
    DriftMethod("cramer_von_mises", "Cramer-von Mises", NUMERICAL, 0.1, Verdict.P_VALUE_LE,
                cramer_von_mises, effect="ks_statistic"),
)
