"""Drift methods: Evidently's methods by Evidently's names, computed on column samples."""

from __future__ import annotations

from .base import ColumnKind, ColumnSample, DriftMethod, Verdict
from .registry import METHODS, UnknownMethodError, default_method, get_method

__all__ = [
    "METHODS",
    "ColumnKind",
    "ColumnSample",
    "DriftMethod",
    "UnknownMethodError",
    "Verdict",
    "default_method",
    "get_method",
]
