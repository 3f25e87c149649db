"""`driftline` command line: run, check, reference build, evaluate."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

# Evidently (imported only for reports and by tests) phones home unless told not to.
os.environ.setdefault("DO_NOT_TRACK", "1")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _cmd_check(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_settings
    from .monitor import MonitorSetupError, feature_kinds
    from .reference import ReferenceError, load_profile

    try:
        settings, secrets = load_settings(args.config)
    except ConfigError as exc:
        _print_problems(args.config, exc.problems)
        return EXIT_ERROR
    problems = []
    for i, m in enumerate(settings.monitors):
        try:
            feature_kinds(m, load_profile(m.reference.path), i)
        except ReferenceError as exc:
            problems.append(f"monitors[{i}].reference.path: {exc}")
        except MonitorSetupError as exc:
            problems.append(str(exc))
    if problems:
        _print_problems(args.config, problems)
        return EXIT_ERROR
    print(f"{args.config}: OK ({len(settings.monitors)} monitor{'s' if len(settings.monitors) != 1 else ''})")
    if args.sample is not None:
        from .check import run_samples

        return run_samples(settings, secrets, args.sample, args.timeout)
    return EXIT_OK


def _print_problems(config: str, problems: list[str]) -> None:
    print(f"{config}: {len(problems)} error{'s' if len(problems) != 1 else ''}", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    from .app import Service
    from .config import ConfigError, load_settings
    from .monitor import MonitorSetupError

    try:
        settings, secrets = load_settings(args.config)
    except ConfigError as exc:
        _print_problems(args.config, exc.problems)
        print("driftline: not starting", file=sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(level=settings.service.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR if settings.service.log_level != "DEBUG" else logging.INFO)
    logging.getLogger("kafka.cluster").addFilter(_not_a_cancelled_refresh)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("apscheduler.scheduler").addFilter(_not_a_skipped_tick)
    try:
        service = Service(settings, secrets)
    except MonitorSetupError as exc:
        _print_problems(args.config, [str(exc)])
        print("driftline: not starting", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"driftline: cannot listen on {settings.service.listen}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("driftline").info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    # Wake up now and then: Python runs signal handlers in the main thread only, and a
    # SIGTERM the kernel hands to another thread (seen right after a SIGSTOP/SIGCONT) does
    # not interrupt a wait without timeout, so the handler would never run.
    while not stop.wait(0.5):
        pass
    service.stop()
    return EXIT_OK


def _cmd_reference_build(args: argparse.Namespace) -> int:
    from .drift import ColumnKind
    from .reference import ReferenceError, build_profile, print_calibration_progress, print_progress, save_profile

    kinds = {c: ColumnKind.NUMERICAL for c in _split(args.numerical)}
    kinds.update({c: ColumnKind.CATEGORICAL for c in _split(args.categorical)})
    try:
        profile = build_profile(args.data, columns=_split(args.columns) or None, kinds=kinds,
                                progress=None if args.quiet else print_progress,
                                calibration_progress=None if args.quiet else print_calibration_progress,
                                workers=os.cpu_count() or 1)
        save_profile(profile, args.out)
    except ReferenceError as exc:
        print(f"driftline reference build: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {args.out}: {len(profile.columns)} columns from {profile.meta['rows']:,} rows, "
          f"{profile.content_hash}")
    for name, col in profile.columns.items():
        print(f"  {name:<24} {col.kind.value:<12} {col.sample.n:>10,} values  {col.missing:>8,} missing")
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .offline import run

    return run(args)


def _version() -> str:
    """The installed package's version, from its metadata (as driftline_build_info reports it;
    not through metrics.py, whose imports would cost `--version` a second)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("driftline")
    except PackageNotFoundError:
        return "unknown"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of records, at least 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds greater than 0, got {text!r}")
    return value


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="driftline", description="Data drift monitoring for ML models in production.")
    p.add_argument("--version", action="version", version=f"driftline {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the service")
    run.add_argument("--config", required=True, help="YAML configuration file")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="validate a configuration and print every error with its location",
                           epilog="exit codes: 0 valid (and with --sample, some sampled record is valid); 1 an "
                                  "error, a topic that cannot be read, or every sampled record of a monitor invalid")
    check.add_argument("--config", required=True)
    check.add_argument("--sample", type=_positive_int, metavar="N",
                       help="also read the last N records of each monitor's topic (outside its consumer group, "
                            "committing nothing) and count how they decode: valid, or invalid by reason")
    check.add_argument("--timeout", type=_positive_float, default=15.0, metavar="SECONDS",
                       help="with --sample: how long to wait for each monitor's broker and records (default 15)")
    check.set_defaults(func=_cmd_check)

    ref = sub.add_parser("reference", help="reference profiles")
    ref_sub = ref.add_subparsers(dest="reference_command", required=True)
    build = ref_sub.add_parser("build", help="build a reference profile from training data (Parquet or CSV)")
    build.add_argument("--data", required=True, type=Path, help="training data, .parquet or .csv")
    build.add_argument("--out", required=True, type=Path, help="profile file to write (.dlref)")
    build.add_argument("--columns", help="comma-separated columns to profile (default: all)")
    build.add_argument("--numerical", help="columns to treat as numerical, overriding the inferred type")
    build.add_argument("--categorical", help="columns to treat as categorical, overriding the inferred type")
    build.add_argument("--quiet", action="store_true", help="no progress lines")
    build.set_defaults(func=_cmd_reference_build)

    ev = sub.add_parser(
        "evaluate", help="drift of a data file against a reference, as the service computes it",
        description="Compare a data file (Parquet or CSV) with a reference, with the service's drift engine.",
        epilog="exit codes: 0 evaluated (no dataset drift, or drift without --fail-on-drift); 1 an error, "
               "named by its option; 2 a malformed command line; 3 dataset drift with --fail-on-drift")
    ev.add_argument("--reference", required=True, type=Path,
                    help="a .dlref profile, or training data (.parquet or .csv) profiled in memory")
    ev.add_argument("--current", required=True, type=Path, help="the data to check, .parquet or .csv")
    ev.add_argument("--columns", help="comma-separated columns to compare (default: every column in both files "
                                      "but those that look like identifiers or timestamps)")
    ev.add_argument("--exclude", help="comma-separated columns to leave out")
    ev.add_argument("--method", help="drift method for every column (default: Evidently's choice per column)")
    ev.add_argument("--num-method", help="drift method for numerical columns")
    ev.add_argument("--cat-method", help="drift method for categorical columns")
    ev.add_argument("--threshold", help="threshold for every column (default: each method's own)")
    ev.add_argument("--drift-share", default="0.5", help="the dataset drifts when this share of columns drifts "
                                                         "(default 0.5)")
    ev.add_argument("--per-column-method", metavar="COL=METHOD,...", help="a column's own method")
    ev.add_argument("--per-column-threshold", metavar="COL=VALUE,...", help="a column's own threshold")
    ev.add_argument("--numerical", help="columns to treat as numerical (reference given as data)")
    ev.add_argument("--categorical", help="columns to treat as categorical (reference given as data)")
    ev.add_argument("--prediction-column", help="the model's output: scored and reported apart, not in the share")
    ev.add_argument("--calibration", default="on", help="on (default): thresholds calibrated to the file's size; "
                                                        "off: Evidently's plain thresholds")
    ev.add_argument("--format", default="table", help="table (default) or json")
    ev.add_argument("--html", metavar="FILE", type=Path,
                    help="also write Evidently's drill-down report of the file against the reference to FILE "
                         "(needs pip install 'driftline[reports]')")
    ev.add_argument("--fail-on-drift", action="store_true", help="exit with 3 when the dataset drifts")
    ev.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ev.set_defaults(func=_cmd_evaluate)
    return p


def _not_a_cancelled_refresh(record: logging.LogRecord) -> bool:
    """kafka-python 3.0 logs a metadata refresh that closing a consumer cancels as an ERROR
    (kafka/cluster.py, _do_refresh_metadata): seen whenever a consumer closes while one is under
    way (at shutdown, or a short-lived reader). Nothing failed: drop it."""
    from kafka.errors import Cancelled

    return not (record.msg == "Metadata refresh: failed %s" and isinstance(record.args, tuple)
                and len(record.args) == 1 and isinstance(record.args[0], Cancelled))


def _not_a_skipped_tick(record: logging.LogRecord) -> bool:
    """APScheduler logs a WARNING each time a job's tick comes while its previous run is still
    going (apscheduler/schedulers/base.py, `_process_jobs`): every `evaluation_interval` while a
    backlog's windows are evaluated. The jobs run one at a time by design (max_instances=1) and
    the next tick evaluates whatever is still due: nothing is skipped that matters. Drop it."""
    return "maximum number of running instances reached" not in str(record.msg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
