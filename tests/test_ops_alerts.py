"""Alert rules (deploy/prometheus/) with promtool, their unit tests, and their runbooks.

`promtool check rules` must be clean; `promtool test rules` must pass, and its tests must make
every alert both fire and resolve; every alert must carry a severity, a summary and description
that name the monitor, a `for:` and a runbook URL whose anchor is a section of docs/runbooks.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "driftline-alerts.yml"
RULE_TESTS = PROM_DIR / "driftline-alerts.test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"

REQUIRED_ALERTS = {  # issue 5: what must be alerted on
    "persistent drift": "DriftlineDatasetDriftPersistent",
    "missing features": "DriftlineFeatureMissing",
    "serving latency above an objective": "DriftlineServingLatencyHigh",
    "event lag": "DriftlineEventLagHigh",
    "growing consumer lag": "DriftlineConsumerLagGrowing",
    "no events received": "DriftlineNoEvents",
    "stale evaluation": "DriftlineEvaluationStale",
    "failing webhook deliveries": "DriftlineWebhookDeliveriesFailing",
    "driftline down": "DriftlineDown",
    # issue 13: broken data named as such
    "unseen categories": "DriftlineUnseenCategories",
    "missing values far above training": "DriftlineMissingValuesIncreased",
    "values out of the training range": "DriftlineValuesOutOfRange",
    "type or schema changes": "DriftlineFeatureTypeErrors",
}
QUALITY_ALERTS = {"DriftlineUnseenCategories", "DriftlineMissingValuesIncreased", "DriftlineValuesOutOfRange",
                  "DriftlineFeatureTypeErrors"}
DRIFT_ALERTS = {"DriftlineDatasetDriftPersistent", "DriftlineFeatureDriftPersistent", "DriftlineFeatureMissing",
                "DriftlineUnseenCategories", "DriftlineMissingValuesIncreased", "DriftlineValuesOutOfRange",
                "DriftlineFeatureTypeErrors"}


def promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: `make ops-tools` installs Debian's prometheus package"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def github_anchors(markdown: str) -> set[str]:
    """Anchors of the markdown's headings, as GitHub (and most renderers) make them."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_promtool_check_rules_is_clean() -> None:
    proc = promtool("check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout
    assert "WARNING" not in (proc.stdout + proc.stderr).upper()


def test_promtool_unit_tests_pass() -> None:
    proc = promtool("test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_alert_fires_and_then_resolves_in_the_unit_tests() -> None:
    """For every alert: a test case where it has not fired yet, one where it fires, and for every
    alert that fired (by its labels) a later case where it no longer does."""
    cases: dict[str, list[tuple[int, set[frozenset[tuple[str, str]]]]]] = {}
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            firing = {frozenset(a["exp_labels"].items()) for a in case["exp_alerts"]}
            cases.setdefault(case["alertname"], []).append((duration_seconds(case["eval_time"]), firing))
    for rule in alert_rules():
        timeline = sorted(cases.get(rule["alert"], []), key=lambda c: c[0])
        fired = [(t, f) for t, f in timeline if f]
        assert fired, f"{rule['alert']}: no unit test where it fires"
        assert any(not f and t < fired[0][0] for t, f in timeline), \
            f"{rule['alert']}: no unit test where it has not fired yet (its for: is untested)"
        for t, firing in fired:
            for labels in firing:
                assert any(t2 > t and labels not in f2 for t2, f2 in timeline), \
                    f"{rule['alert']} {dict(labels)}: no unit test where it resolves after firing"


def test_the_unit_tests_fail_when_an_alert_stops_firing(tmp_path: Path) -> None:
    """The unit tests have teeth: with one rule's condition made impossible, promtool fails."""
    rules = yaml.safe_load(RULES.read_text())
    rules["groups"][1]["rules"][0]["expr"] = "vector(0) > 1"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    proc = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0 and rules["groups"][1]["rules"][0]["alert"] in proc.stdout + proc.stderr


def test_the_required_alerts_exist() -> None:
    names = {r["alert"] for r in alert_rules()}
    missing = {need: name for need, name in REQUIRED_ALERTS.items() if name not in names}
    assert not missing, missing
    assert len(names) == len(alert_rules()), "duplicate alert names"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_each_alert_is_actionable(rule: dict[str, Any]) -> None:
    labels, ann = rule.get("labels", {}), rule.get("annotations", {})
    assert labels.get("severity") in ("critical", "warning")
    assert {"summary", "description", "runbook_url"} <= set(ann)
    assert duration_seconds(rule.get("for", "0s")) >= 120, "a for: keeps one bad scrape or window from paging"
    if rule["alert"] in DRIFT_ALERTS:  # at least two 5-minute windows of the example configuration
        assert duration_seconds(rule["for"]) >= 600
    if rule["alert"] != "DriftlineDown":
        assert "$labels.monitor" in ann["summary"] and "$labels.monitor" in ann["description"]
    if rule["alert"] in ("DriftlineFeatureDriftPersistent", "DriftlineFeatureMissing", *QUALITY_ALERTS):
        assert "$labels.feature" in ann["summary"] and "$labels.feature" in ann["description"]
    if rule["alert"] == "DriftlineDatasetDriftPersistent":  # it names the drifted features
        assert ".Labels.feature" in ann["summary"] and ".Labels.feature" in ann["description"]
    if rule["alert"] in ("DriftlineDatasetDriftPersistent", "DriftlineFeatureDriftPersistent"):
        # one alert per horizon (window length) that drifts: the summary says which, and the
        # queries in the annotations stay on that horizon
        assert "$labels.horizon" in ann["summary"]
        queries = re.findall(r'printf "([^"]*(?:\\"[^"]*)*)"', ann["summary"] + ann["description"])
        queries = [q for q in queries if "driftline_" in q]  # not the number formats
        assert queries and all("horizon=%q" in q for q in queries), queries


def test_pipeline_alerts_do_not_split_by_horizon() -> None:
    """A 1d horizon evaluates once a day and every horizon repeats a missing feature: freshness
    and missing-feature alerts aggregate the horizons away, so they fire once per monitor
    (per feature) and never for a long horizon that is merely slow."""
    rules = {r["alert"]: r for r in alert_rules()}
    for name in ("DriftlineEvaluationStale", "DriftlineFeatureMissing", *QUALITY_ALERTS):
        assert "max by (job, instance, monitor" in rules[name]["expr"], name
        assert "horizon" not in rules[name]["annotations"]["summary"], name


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_each_runbook_url_points_at_its_section(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    m = re.fullmatch(r"https://[^#\s]+/docs/runbooks\.md#([\w-]+)", url)
    assert m, url
    anchor = m.group(1)
    assert anchor == rule["alert"].lower()
    assert anchor in github_anchors(RUNBOOKS.read_text()), f"docs/runbooks.md has no section #{anchor}"


def test_every_runbook_section_has_what_to_check_and_do() -> None:
    text = RUNBOOKS.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    names = {r["alert"] for r in alert_rules()}
    assert {s.split("\n", 1)[0].strip() for s in sections} == names
    for s in sections:
        title = s.split("\n", 1)[0]
        for part in ("**Meaning.**", "**Impact.**", "**Check.**", "**Act.**", "**Resolves**"):
            assert part in s, f"runbook {title}: no {part}"


def test_rules_use_only_metrics_of_the_readme() -> None:
    """The live test checks the names against a running driftline; this one against the README's
    metrics table (names are an API), without starting anything."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(driftline_[a-z_]+)`", table))
    documented |= {f"{n}_bucket" for n in documented}
    used = set(re.findall(r"\b(driftline_[a-z_]+)\b", RULES.read_text()))
    assert used and not used - documented, sorted(used - documented)


def test_the_prometheusrule_ships_exactly_these_rules() -> None:
    [doc] = [d for d in yaml.safe_load_all(PROMETHEUS_RULE.read_text()) if d]
    assert doc["kind"] == "PrometheusRule"
    assert doc["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
