"""Drill-down reports: Evidently's own HTML report for one window against the reference.

The report is Evidently's `Report([DataDriftPreset(...), DataSummaryPreset()])`, run on two
DataFrames rebuilt column by column from driftline's profiles (`report_job`) with driftline's
method and threshold for every feature, so Evidently's verdicts are driftline's:

- **window exact** (every numerical feature within the exactness budget): the current frame
  holds exactly the window's values (in the order they arrived), each category as often as
  counted, and as many NaN as the feature was missing: every drift score Evidently
  computes equals driftline's for that window (to the 1e-9 of docs/drift-methods.md; except
  where that page says Evidently errs or draws unseeded random numbers: `empirical_mmd`'s
  permutations, `TVD`'s tie order);
- **window beyond the budget**: the current frame is a uniform sample of `budget` rows per
  column drawn from the window's sample (categories by a multivariate hypergeometric draw of
  the exact counts), so distances (Wasserstein, Jensen-Shannon, PSI, ...) come close to
  driftline's and p-values are those of `budget` rows;
- **reference beyond `reference_rows`** (default 100,000): the reference frame is a uniform
  sample of that many rows per column (seeded by the reference hash and the window, so a
  report renders the same every time); driftline's own scores use every reference row, so
  the report's numbers then differ by sampling error (p-values most).

Rows are rebuilt per column: a row of the frames is not an event, so row-level figures of
the summary (duplicated or empty rows) say nothing about the events; the page says so.
The prediction is in the summary and has its own drift test, outside the dataset drift
share, as driftline reports it. Features driftline did not evaluate (no value in the
window, or too few events) are shown in the summary only.

Cost: Evidently takes seconds (about 8 s for a 100,000-event window of 13 columns against
a 20,000-row reference on a 2-core machine, `bench/bench_report.py`), and about 4.5 MB of
HTML (its 3.5 MB JavaScript bundle is inlined: the page loads nothing from elsewhere). It
runs in a worker process (`ReportRenderer`) with a timeout, never on the ingest path; the
worker imports Evidently once (about 4 s) and can render many reports. Evidently is the
optional extra ``driftline[reports]``; its telemetry is off (``DO_NOT_TRACK=1``) in the worker.

The HTML shows distributions drawn from the window's sample: serve it only to those allowed
to see serving data (behind the API token).
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .profile import WindowProfile
from .reference import ReferenceProfile
from .report_frames import (
    REFERENCE_ROWS,
    ReportColumn,
    ReportError,
    ReportJob,
    ReportTimeout,
    ReportUnavailable,
    columns_from_result,
    report_job,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["DEFAULT_TIMEOUT", "INSTALL_HINT", "REFERENCE_ROWS", "ReportColumn", "ReportError", "ReportJob",
           "ReportRenderer", "ReportTimeout", "ReportUnavailable", "build_snapshot", "columns_from_result",
           "render_html", "render_report", "report_job"]

DEFAULT_TIMEOUT = 60.0
INSTALL_HINT = "pip install 'driftline[reports]'"


# -- Evidently (in the worker, or in tests) ------------------------------------------------

def build_snapshot(job: ReportJob) -> Any:
    """Run Evidently's report on the job's frames; returns its Snapshot."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    dd = DataDefinition(numerical_columns=list(job.numerical), categorical_columns=list(job.categorical))
    metrics: list[Any] = []
    if job.drift:
        metrics.append(DataDriftPreset(columns=[c.name for c in job.drift], drift_share=job.drift_share,
                                       per_column_method={c.name: c.method for c in job.drift},
                                       per_column_threshold={c.name: c.threshold for c in job.drift
                                                             if c.threshold is not None}))
    if job.prediction is not None:
        metrics.append(ValueDrift(column=job.prediction.name, method=job.prediction.method,
                                  threshold=job.prediction.threshold))
    metrics.append(DataSummaryPreset())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Evidently's own pandas/numpy warnings are not the user's
        return Report(metrics).run(Dataset.from_pandas(job.current, data_definition=dd),
                                   Dataset.from_pandas(job.reference, data_definition=dd))


def render_html(job: ReportJob) -> str:
    """Evidently's standalone HTML page (its scripts and font inlined) with driftline's notes.

    Evidently raises on some inputs where driftline gives the textbook value (`g_test` and
    `fisher_exact` on sides of different sizes, ...: docs/drift-methods.md): such columns
    leave the drift table, the notes name them, and the rest is rendered."""
    try:
        snapshot = build_snapshot(job)
    except Exception:
        failing = _failing_columns(job)
        if not failing:
            raise
        kept = tuple(c for c in job.drift if c.name not in failing)
        pred = job.prediction if job.prediction is None or job.prediction.name not in failing else None
        every = (*job.drift, *([job.prediction] if job.prediction else []))
        extra = tuple(f"Evidently cannot compute {c.method} for {c.name} on this window ({failing[c.name]}; see "
                      f"driftline's docs/drift-methods.md): left out of Evidently's drift table."
                      for c in every if c.name in failing)
        job = dataclasses.replace(job, drift=kept, prediction=pred, notes=(*job.notes, *extra))
        snapshot = build_snapshot(job)
    page: str = snapshot.get_html_str(as_iframe=False)
    title = html.escape(job.title or "driftline report")
    paragraphs = "".join(f"<p style='margin:4px 0'>{html.escape(n)}</p>" for n in job.notes)
    banner = (f"<div id='driftline-notes' style='font-family:system-ui,sans-serif;font-size:14px;margin:16px;"
              f"padding:12px 16px;border:1px solid #ccc;border-radius:4px;background:#fafafa'>"
              f"<h1 style='font-size:20px;margin:0 0 8px'>{title}</h1>{paragraphs}</div>")
    if "<body>" not in page or "<head>" not in page:
        raise ReportError("Evidently's page has no <head> or <body>: this Evidently version is not supported")
    page = page.replace("<head>", f"<head>\n<title>{title}</title>", 1)
    return page.replace("<body>", "<body>\n" + banner, 1)


# -- the worker process ---------------------------------------------------------------------

def _serve(read_fd: int, write_fd: int) -> None:
    """The worker's loop: a job in, ("ok", html) or (status, message) out, until EOF."""
    from multiprocessing.connection import Connection

    os.environ["DO_NOT_TRACK"] = "1"  # before Evidently is imported: no telemetry, whatever the parent had
    os.dup2(2, 1)  # a library's print must not land in the pipe protocol
    jobs, out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        import evidently  # noqa: F401  (paid once, before the first job)
    except ImportError:
        out.send(("unavailable", f"reports need Evidently, which is not installed: {INSTALL_HINT}"))
        return
    out.send(("ready", ""))
    while True:
        try:
            job = jobs.recv()
        except EOFError:
            return
        try:
            out.send(("ok", render_html(job)))
        except Exception as exc:  # the type only: an exception's text may quote a value
            out.send(("error", f"Evidently failed to build the report ({type(exc).__name__})"))


def _failing_columns(job: ReportJob) -> dict[str, str]:
    """The drift columns whose Evidently test raises on this job's data, with the error's type."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    failing = {}
    for c in (*job.drift, *([job.prediction] if job.prediction else [])):
        kind = ColumnType.Categorical if c.name in job.categorical else ColumnType.Numerical
        ref, cur = job.reference[c.name].dropna(), job.current[c.name].dropna()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                get_stattest(ref, cur, kind, c.method)(ref, cur, kind, c.threshold)
        except Exception as exc:
            failing[c.name] = type(exc).__name__
    return failing


class ReportRenderer:
    """A worker process that renders reports one at a time, each within its timeout.

    Evidently is imported once, when the worker starts (`start`, or the first `render`);
    a render that times out kills the worker (a thread could not be stopped), and the next
    render starts a new one. The worker is a fresh interpreter (not a fork: it inherits no
    thread or socket of the service, and no caller's main module is imported again); jobs
    and pages travel as pickles over two pipes. Thread-safe: calls wait for each other.

    The worker holds about 400 MB (Evidently, pandas, plotly): after `idle_timeout`
    seconds without a render it stops (None: it stays until `close`); the next render
    starts it again, about 4 s more."""

    def __init__(self, start_timeout: float = 60.0, idle_timeout: float | None = 300.0) -> None:
        self.start_timeout, self.idle_timeout = start_timeout, idle_timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._jobs: Connection | None = None
        self._pages: Connection | None = None
        self._idle: threading.Timer | None = None
        self._mark = object()

    @property
    def running(self) -> bool:
        """Whether a worker is up (Evidently imported, ready for a job)."""
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        with self._lock:
            self._start()
            self._arm_idle()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self.idle_timeout is not None:
            self._idle = threading.Timer(self.idle_timeout, self._stop_if_idle, args=(self._idle_mark(),))
            self._idle.daemon = True
            self._idle.start()

    def _idle_mark(self) -> object:
        self._mark = object()  # a render since the timer was armed replaces it
        return self._mark

    def _stop_if_idle(self, mark: object) -> None:
        with self._lock:
            if mark is self._mark:
                self._stop()

    def _start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop()
        if importlib.util.find_spec("evidently") is None:
            raise ReportUnavailable(f"reports need Evidently, which is not installed: {INSTALL_HINT}")
        from multiprocessing.connection import Connection

        job_r, job_w = os.pipe()
        page_r, page_w = os.pipe()
        code = f"from driftline.service.report import _serve; _serve({job_r}, {page_w})"
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(job_r, page_w),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, env={**os.environ, "DO_NOT_TRACK": "1"})
        finally:
            os.close(job_r)
            os.close(page_w)
        self._jobs, self._pages = Connection(job_w, readable=False), Connection(page_r, writable=False)
        status, message = self._receive(self.start_timeout, "starting the report worker")
        if status == "unavailable":
            self._stop()
            raise ReportUnavailable(message)

    def render(self, job: ReportJob, timeout: float = DEFAULT_TIMEOUT) -> str:
        with self._lock:
            self._start()
            assert self._jobs is not None
            try:
                self._jobs.send(job)
            except OSError:
                self._stop()
                raise ReportError("the report worker died before it took the job") from None
            status, message = self._receive(timeout, "rendering the report")
            self._arm_idle()
            if status != "ok":
                raise ReportError(message)
            return message

    def _receive(self, timeout: float, what: str) -> tuple[str, str]:
        assert self._pages is not None
        try:
            if self._pages.poll(timeout):
                status, message = self._pages.recv()
                return str(status), str(message)
        except (EOFError, OSError):
            self._stop()
            raise ReportError(f"the report worker died while {what}") from None
        self._stop()
        raise ReportTimeout(f"{what} took longer than {timeout:g} s; the worker was stopped")

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        for conn in (self._jobs, self._pages):
            if conn is not None:
                conn.close()
        self._jobs = self._pages = None
        if proc is not None:
            proc.kill()  # nothing to save: a page not sent is lost either way
            proc.wait(10)

    def close(self) -> None:
        with self._lock:
            if self._idle is not None:
                self._idle.cancel()
            self._stop()

    def __enter__(self) -> ReportRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def render_report(window: WindowProfile, reference: ReferenceProfile, features: Sequence[ReportColumn], *,
                  drift_share: float, prediction: ReportColumn | None = None, title: str = "",
                  timeout: float = DEFAULT_TIMEOUT, renderer: ReportRenderer | None = None,
                  reference_rows: int = REFERENCE_ROWS, current_rows: int | None = None,
                  notes: Sequence[str] = ()) -> str:
    """Evidently's HTML report for `window` against `reference` (see the module docstring).

    `features`: the window's features in its order, each with driftline's method and
    threshold (`columns_from_result` takes them from the window's `WindowResult`, with the notes to pass).
    `renderer`: a long-lived `ReportRenderer` (the service keeps one); without it a worker
    is started for this report and stopped after (about 4 s more).
    Raises ReportUnavailable without Evidently, ReportTimeout past `timeout` seconds of
    rendering, ReportError otherwise."""
    job = report_job(window, reference, features, drift_share=drift_share, prediction=prediction, title=title,
                     reference_rows=reference_rows, current_rows=current_rows, notes=notes)
    if renderer is not None:
        return renderer.render(job, timeout)
    with ReportRenderer() as own:
        return own.render(job, timeout)
