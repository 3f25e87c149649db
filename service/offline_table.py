"""The table `driftline evaluate` prints: one row per column, every limit of its verdict."""

from __future__ import annotations

from .evaluation import FeatureDrift, WindowResult


def render_table(r: WindowResult, reference_line: str, current_line: str) -> str:
    lines = [reference_line, current_line, f"calibration {_calibration_line(r)}", ""]
    rows: list[tuple[str, ...]] = [_HEADER]
    rows += [_table_row(f) for f in r.features]
    if r.prediction is not None:
        rows.append(_table_row(r.prediction, counted=False))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):  # text columns left-aligned, numbers right-aligned
        if r.prediction is not None and n == len(rows) - 1:
            lines += ["", "prediction (reported apart, not counted in the share):"]
        lines.append("  ".join(c.ljust(w) if _HEADER[i] in _TEXT else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    evaluated = sum(f.method is not None for f in r.features)
    counted = "" if r.dataset_share == r.drift_share else (
        f"; beyond the dataset's floors: {sum(f.counts_for_dataset for f in r.features)}, share {r.dataset_share:.4g}")
    lines += ["", f"dataset drift: {'YES' if r.dataset_drift else 'no'}, {len(r.drifted_features)} of "
                  f"{evaluated} features drifted (share {r.drift_share:.4g}{counted}; "
                  f"drifts at {r.drift_share_threshold:g})"]
    lines += _quality_lines(r)
    return "\n".join(lines)


_HEADER = ("feature", "type", "method", "threshold", "score", "effect_size", "effect_floor", "noise_floor",
           "dataset_floor", "decided_by", "drifted", "values", "missing", "quality")
_TEXT = {"feature", "type", "method", "decided_by", "drifted", "quality"}


def _calibration_line(r: WindowResult) -> str:
    if r.calibration != "on" or r.false_alarm_level is None:
        return r.calibration + (" (Evidently's plain thresholds)" if r.calibration == "off" else "")
    dataset = r.dataset_false_alarm_level
    rule = ("" if dataset is None or dataset == r.false_alarm_level else
            f"; the dataset rule counts the features beyond the floor of level {dataset:.2g}")
    return (f"on: a feature drifts beyond its threshold and the noise floor of its window's size "
            f"(level {r.false_alarm_level:.2g} per feature{rule}, {r.false_alarm_level_basis or 'markov'}; "
            f"Evidently's thresholds alone flag: "
            f"{', '.join(f.feature for f in r.features if f.plain_drifted) or 'none'})")


def _table_row(f: FeatureDrift, counted: bool = True) -> tuple[str, ...]:
    """One column's row; `counted`: a feature the dataset rule may count (marked where it did not)."""
    def num(x: float | None, digits: int = 10) -> str:
        return "-" if x is None else f"{x:.{digits}g}"

    verdict = "no_values" if f.method is None else ("YES" if f.drifted else "no")
    issues = ",".join(f.quality.issues) if f.quality and f.quality.issues else "-"
    return (f.feature, f.kind.value, f.method or "-", num(f.threshold), num(f.score), num(f.effect_size, 4),
            num(f.effect_size_floor, 4), num(f.noise_floor, 4), num(f.dataset_noise_floor, 4), f.decided_by or "-",
            verdict + (" (not counted)" if counted and f.drifted and not f.counts_for_dataset else ""),
            f"{f.values:,}",
            f"{100 * f.missing_ratio:.1f}%", issues)


def _quality_lines(r: WindowResult) -> list[str]:
    out = []
    for f in r.quality_issues:
        q = f.quality
        assert q is not None
        parts = []
        if "unseen_category" in q.issues and q.unseen_category_ratio is not None:
            named = ", ".join(f"{label} ({n:,})" for label, n in q.unseen_labels)
            kinds = f"{q.unseen_categories:,} categor{'y' if q.unseen_categories == 1 else 'ies'}"
            parts.append(f"{100 * q.unseen_category_ratio:.1f}% of values in {kinds} the reference never had "
                         f"(expected {100 * (q.expected_unseen_ratio or 0):.1f}%)" + (f": {named}" if named else ""))
        if "out_of_range" in q.issues and q.out_of_range_ratio is not None:
            parts.append(f"{100 * q.out_of_range_ratio:.1f}% of values outside the reference's range")
        if "missing_increase" in q.issues:
            parts.append(f"missing in {100 * q.missing_ratio:.1f}% of rows (reference: "
                         f"{100 * q.reference_missing_ratio:.1f}%)")
        if "type_error" in q.issues and q.type_error_ratio is not None:
            parts.append(f"{100 * q.type_error_ratio:.1f}% of rows of the wrong type")
        out.append(f"  {f.feature}: " + "; ".join(parts))
    return ["", "data quality:", *out] if out else []
