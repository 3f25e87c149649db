"""Benchmark: rendering one window's drill-down report (Evidently's HTML report).

    .venv/bin/python bench/bench_report.py [--window-events 100000] [--reference-rows 20000 1000000]

A window of the demo's credit-risk traffic (12 features and the prediction, two features
with missing values, three shifted), filled as the service fills it (the default budget of
100,000 values per feature), against references of the given sizes built from training
data as `driftline reference build` does. Timed: the worker's start (importing Evidently,
paid once per worker), building the frames from the profiles (`report_job`), and the render
in a warm worker (`render_report` with a `ReportRenderer`: Evidently's run and its HTML),
best of --repeat. A reference beyond 100,000 rows is shown as a uniform sample of 100,000
(REFERENCE_ROWS): the 1M-row case shows what that bound buys (--unbounded renders it whole too).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")

import pandas as pd
from driftline.service.config import MonitorSettings
from driftline.service.demo.traffic import DEFAULT_SHIFT, FEATURES, TrafficModel
from driftline.service.evaluation import evaluate_window
from driftline.service.offline import _batch
from driftline.service.profile import WindowProfile
from driftline.service.reference import build_profile
from driftline.service.report import REFERENCE_ROWS, ReportRenderer, columns_from_result, render_report, report_job


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window-events", type=int, default=100_000)
    ap.add_argument("--reference-rows", type=int, nargs="+", default=[20_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--unbounded", action="store_true", help="also render a large reference whole, once")
    args = ap.parse_args()

    current = pd.DataFrame(TrafficModel(seed=2, shift=DEFAULT_SHIFT).columns(args.window_events))
    names = list(FEATURES)
    with tempfile.TemporaryDirectory() as tmp, ReportRenderer() as renderer:
        started = time.perf_counter()
        renderer.start()
        print(f"worker start (import Evidently): {time.perf_counter() - started:.2f} s")
        for rows in args.reference_rows:
            path = Path(tmp) / f"ref-{rows}.parquet"
            pd.DataFrame(TrafficModel(seed=1).columns(rows)).to_parquet(path)
            reference = build_profile(path)
            kinds = [reference.columns[n].kind for n in names]
            pred_kind = reference.columns["prediction"].kind
            window = WindowProfile(tuple(kinds), 0.0, 300.0, prediction_kind=pred_kind)
            for start in range(0, len(current), 10_000):  # as polls arrive
                window.add_batch(_batch(current.iloc[start:start + 10_000], names, kinds, "prediction", pred_kind,
                                        path))
            settings = MonitorSettings.model_validate({
                "name": "credit-risk", "kafka": {"bootstrap_servers": ["x:1"], "topic": "t", "group_id": "g"},
                "reference": {"path": str(path)}, "event": {"features": names, "prediction": {"path": "p"}},
                "window": {"size": "5m"}, "drift": {"drift_share": 0.2}})
            result = evaluate_window(window, reference, settings, tuple(names))
            features, pred, _ = columns_from_result(result, "prediction")

            t = time.perf_counter()
            job = report_job(window, reference, features, drift_share=0.2, prediction=pred)
            frames = time.perf_counter() - t
            renders = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                page = render_report(window, reference, features, drift_share=0.2, prediction=pred,
                                     renderer=renderer, timeout=600)
                renders.append(time.perf_counter() - t)
            print(f"window {window.events:,} events x {len(names)} features + prediction, reference {rows:,} rows "
                  f"(shown: {len(job.reference):,}, at most {REFERENCE_ROWS:,}): frames {frames:.2f} s, "
                  f"render {min(renders):.2f} s (best of {args.repeat}), page {len(page) / 1e6:.1f} MB, "
                  f"drifted: {', '.join(f.feature for f in result.drifted_features)}")
            print(f"  worker memory: {_memory(renderer)}")
            if rows > REFERENCE_ROWS and args.unbounded:
                t = time.perf_counter()
                render_report(window, reference, features, drift_share=0.2, prediction=pred, renderer=renderer,
                              timeout=1200, reference_rows=rows)
                print(f"  the same with all {rows:,} reference rows (no bound): {time.perf_counter() - t:.2f} s")
    return 0


def _memory(renderer: ReportRenderer) -> str:
    proc = renderer._proc
    if proc is None:
        return "no worker"
    status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
    fields = {k: v.split()[0] for k, v in (line.split(":", 1) for line in status) if k in ("VmRSS", "VmHWM")}
    return f"{int(fields['VmRSS']) / 1024:.0f} MB now, peak {int(fields['VmHWM']) / 1024:.0f} MB"


if __name__ == "__main__":
    sys.exit(main())
