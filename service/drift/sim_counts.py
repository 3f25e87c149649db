"""Simulated windows as counts over a reference's categories, distinct values or histogram bins.

The measures are those of `binned.py`, `counts.py` and `effects.py` on such windows, computed
for many windows at once (the tests hold them equal to the methods' own numbers), against the
reference's shares (or, `measures_of(shares=…)`, one row of shares per window).
"""

from __future__ import annotations

import math

import numpy as np

_BATCH_ELEMENTS = 1 << 19
CATEGORICAL_MEASURES = ("psi", "kl_div", "jensenshannon", "hellinger", "tv_distance", "cohens_w", "cohens_h")


def fill_value(smallest: np.ndarray) -> np.ndarray:
    """binned._fill_zeroes: what an empty share becomes, given the smallest non-empty one."""
    return np.where(smallest <= 0.0001, smallest / 10**6, 0.0001)


def multinomial_rows(p: np.ndarray, m: int, reps: int, rng: np.random.Generator,
                     counts: np.ndarray | None = None) -> np.ndarray:
    """(reps, k) multinomial counts of `counts` (default m) draws each over the shares p."""
    k = p.size
    totals = np.full(reps, m, dtype=np.int64) if counts is None else counts
    if k <= 4 * m or k <= 256:
        return rng.multinomial(totals, p)
    cdf = np.cumsum(p)  # many categories, few values: draw the values themselves, in batches
    cdf[-1] = 1.0
    out = np.zeros((reps, k), dtype=np.int64)
    step = max(1, _BATCH_ELEMENTS // max(m, k))
    for start in range(0, reps, step):
        stop = min(reps, start + step)
        labels = np.searchsorted(cdf, rng.random((stop - start, m)), side="right")
        labels[np.arange(m)[None, :] >= totals[start:stop, None]] = k  # slots beyond each row's total
        flat = labels + (k + 1) * np.arange(stop - start)[:, None]
        out[start:stop] = np.bincount(flat.ravel(), minlength=(k + 1) * (stop - start)).reshape(-1, k + 1)[:, :k]
    return out


class CountModel:
    """Windows as counts over the reference's categories (`keyed`: only those present on
    either side are compared, as category maps are) or over fixed bins (every bin compared)."""

    def __init__(self, ref_counts: np.ndarray, unseen: float = 0.0, keyed: bool = True) -> None:
        self.counts = np.asarray(ref_counts, dtype=np.float64)
        self.n = int(self.counts.sum())
        self.p = self.counts / self.n
        self.unseen = unseen  # share of new data in categories the reference never had
        self.keyed = keyed

    def draw(self, m: int, reps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(counts, new): windows' counts in the categories, and their values in new categories."""
        new = rng.binomial(m, self.unseen, reps) if self.unseen > 0 else np.zeros(reps, dtype=np.int64)
        return multinomial_rows(self.p, m, reps, rng, m - new), new

    def measures(self, m: int, reps: int, rng: np.random.Generator, which: tuple[str, ...]) -> dict[str, np.ndarray]:
        c, new = self.draw(m, reps, rng)
        return self.measures_of(c, new, m, which)

    def measures_of(self, c: np.ndarray, new: np.ndarray, m: int, which: tuple[str, ...],
                    shares: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The measures of windows with counts `c` in the categories and `new` values in new ones,
        against the reference's shares (or one row of `shares` per window)."""
        p = self.p[None, :] if shares is None else shares
        present = (p > 0) | (c > 0) if self.keyed else np.ones(c.shape, dtype=bool)
        q = c / m
        out: dict[str, np.ndarray] = {}
        if "psi" in which or "kl_div" in which:
            out["psi"], out["kl_div"] = self._psi_kl(p, c, new, m, present)
        if "jensenshannon" in which:
            mid = (p + q) / 2
            with np.errstate(divide="ignore", invalid="ignore"):
                left = np.where(p > 0, p * np.log(p / mid), 0.0)
                right = np.where(q > 0, q * np.log(q / mid), 0.0)
            out["jensenshannon"] = np.sqrt(np.maximum(
                ((left + right).sum(axis=1) + new / m * math.log(2)) / 2, 0.0))
        if "hellinger" in which:  # categorical: the Bhattacharyya coefficient over the shares
            out["hellinger"] = np.sqrt(1 - np.clip(np.sqrt(p * q).sum(axis=1), 0, 1))
        if "tv_distance" in which:
            out["tv_distance"] = 0.5 * (np.abs(p - q).sum(axis=1) + new / m)
        if "cohens_w" in which:  # over the reference's categories only
            known = np.where(p > 0, c, 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = known / known.sum(axis=1, keepdims=True)
                out["cohens_w"] = np.sqrt(np.maximum(np.where(p > 0, s * s / p, 0.0).sum(axis=1) - 1, 0.0))
        if "cohens_h" in which:  # the first category on either side is the one z codes 0
            first = np.argmax(present, axis=1)[:, None]
            p1 = 1 - np.take_along_axis(p if p.shape[0] == c.shape[0] else np.broadcast_to(p, c.shape), first, 1)
            p2 = 1 - np.take_along_axis(q, first, 1)
            out["cohens_h"] = np.abs(2 * np.arcsin(np.sqrt(p1)) - 2 * np.arcsin(np.sqrt(p2)))[:, 0]
        return {k: v for k, v in out.items() if k in which}

    @staticmethod
    def _psi_kl(p: np.ndarray, c: np.ndarray, new: np.ndarray, m: int,
                present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Evidently's psi and kl_div: empty shares filled on both sides, then the sums."""
        fill_p = fill_value(np.where(p > 0, p, np.inf).min(axis=1, keepdims=True))
        smallest = np.where(c > 0, c, np.iinfo(np.int64).max).min(axis=1).astype(np.float64)
        fill_q = fill_value(np.where(new > 0, 1.0, smallest) / m)[:, None]
        pf = np.where(p > 0, p, fill_p)
        qf = np.where(c > 0, c / m, fill_q)
        log_ratio = np.log(pf / qf)
        fill_p = fill_p[:, 0]
        new_term = np.log(fill_p * m)
        psi = np.where(present, (pf - qf) * log_ratio, 0.0).sum(axis=1) + new * (fill_p - 1 / m) * new_term
        # scipy's entropy normalises both sides (the fills make each sum slightly above 1)
        sum_p = np.where(present, pf, 0.0).sum(axis=1) + new * fill_p
        sum_q = np.where(present, qf, 0.0).sum(axis=1) + new / m
        kl = ((np.where(present, pf * log_ratio, 0.0).sum(axis=1) + new * fill_p * new_term) / sum_p
              + np.log(sum_q / sum_p))
        return psi, kl

    def hellinger_binned(self, m: int, reps: int, rng: np.random.Generator, edges: np.ndarray) -> np.ndarray:
        return self.hellinger_of(self.draw(m, reps, rng)[0], m, edges)

    def hellinger_of(self, c: np.ndarray, m: int, edges: np.ndarray, shares: np.ndarray | None = None) -> np.ndarray:
        """Evidently's numerical hellinger: bin densities over Sturges bins of the distinct values."""
        widths = np.diff(edges)
        h1 = (self.p[None, :] if shares is None else shares) / widths
        h2 = c / widths / m
        bin_width = (edges.max() - edges.min()) / (edges.size - 1)
        bc = (np.sqrt(h1 * h2) * bin_width).sum(axis=1)
        return np.sqrt(1 - np.clip(bc, 0, 1))
