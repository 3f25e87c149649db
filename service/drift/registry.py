"""Drift methods by the names users write in config, and Evidently's default choice."""

from __future__ import annotations

from . import binned, continuous, counts, moments
from .base import ColumnKind, ColumnSample, DriftMethod, combined_nunique

METHODS: dict[str, DriftMethod] = {
    m.name: m for family in (continuous, moments, binned, counts) for m in family.METHODS
}

# Evidently's _get_default_stattest switches strategy above this many reference values.
_SMALL_REFERENCE_ROWS = 1000
_FEW_VALUES = 5


class UnknownMethodError(ValueError):
    pass


def get_method(name: str) -> DriftMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown drift method {name!r}; available: {', '.join(sorted(METHODS))}"
        ) from None


def default_method(ref: ColumnSample, cur: ColumnSample) -> DriftMethod:
    """Evidently's automatic choice for a column, from the cleaned reference and window.

    Reference of at most 1,000 values: numerical columns with more than 5 distinct values
    get ks, otherwise chisquare (3 to 5 values) or z (1 or 2); categorical columns get
    chisquare or z the same way. Larger reference: jensenshannon for categorical columns
    and numerical ones with at most 5 values, wasserstein for other numerical columns.
    """
    # the pooled distinct values are at least the reference's: count the window's only when it matters
    n_values = ref.nunique if ref.nunique > _FEW_VALUES else combined_nunique(ref, cur)
    if ref.n <= _SMALL_REFERENCE_ROWS:
        if ref.kind is ColumnKind.NUMERICAL and n_values > _FEW_VALUES:
            return METHODS["ks"]
        return METHODS["chisquare"] if n_values > 2 else METHODS["z"]
    if ref.kind is ColumnKind.NUMERICAL and n_values > _FEW_VALUES:
        return METHODS["wasserstein"]
    return METHODS["jensenshannon"]
