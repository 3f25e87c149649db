"""Synthetic model-serving traffic of a credit-risk model, for the demo, tests and benchmarks.

Nine numerical and three categorical features (two with missing values), a prediction
score from a fixed logistic model, a model version, a request timestamp and a serving
latency. `shift` names features whose distribution moves; everything else is drawn from
the training distributions.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NUMERICAL = ("age", "income", "loan_amount", "loan_term_months", "credit_score", "debt_to_income",
             "open_accounts", "months_since_delinquency", "employment_years")
CATEGORICAL = ("home_ownership", "loan_purpose", "region")
FEATURES = NUMERICAL + CATEGORICAL
DEFAULT_SHIFT = ("income", "debt_to_income", "loan_purpose")
MODEL_VERSION = "credit-risk-3.2.0"

_HOME = (("RENT", "MORTGAGE", "OWN", "OTHER"), (0.42, 0.40, 0.16, 0.02))
_PURPOSE = (("debt_consolidation", "credit_card", "home_improvement", "car", "medical", "small_business"),
            (0.45, 0.22, 0.12, 0.10, 0.06, 0.05))
_PURPOSE_SHIFTED = (0.15, 0.15, 0.10, 0.10, 0.20, 0.30)
_REGION = (("northeast", "southeast", "midwest", "southwest", "west"), (0.2, 0.25, 0.2, 0.15, 0.2))


@dataclass
class TrafficModel:
    seed: int = 0
    shift: tuple[str, ...] = ()
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        unknown = set(self.shift) - set(FEATURES)
        if unknown:
            raise ValueError(f"cannot shift unknown features {sorted(unknown)}; features: {', '.join(FEATURES)}")
        self.rng = np.random.default_rng(self.seed)

    def columns(self, n: int) -> dict[str, np.ndarray]:
        """n rows as columns; NaN / None where a value is missing."""
        r, s = self.rng, set(self.shift)
        age = np.clip(r.normal(41, 12, n), 18, 90).round()
        income = r.lognormal(np.log(58_000), 0.45, n) * (0.62 if "income" in s else 1.0)
        loan = np.clip(r.lognormal(np.log(14_000), 0.6, n), 500, 100_000).round(-2)
        if "loan_amount" in s:
            loan *= 1.8
        term = r.choice([36.0, 60.0], n, p=[0.7, 0.3])
        credit = np.clip(r.normal(690 - (40 if "credit_score" in s else 0), 55, n), 300, 850).round()
        dti = np.clip(r.beta(2.2, 7, n) + (0.16 if "debt_to_income" in s else 0.0), 0, 1.2)
        accounts = r.poisson(9, n).astype(float)
        delinquency = r.exponential(30, n).round()
        delinquency[r.random(n) < 0.55] = np.nan  # most applicants never were delinquent
        employment = np.clip(r.gamma(2.0, 3.5, n), 0, 45).round(1)
        employment[r.random(n) < 0.04] = np.nan  # not provided
        home = r.choice(_HOME[0], n, p=_HOME[1])
        purpose = r.choice(_PURPOSE[0], n, p=_PURPOSE_SHIFTED if "loan_purpose" in s else _PURPOSE[1])
        region = r.choice(_REGION[0], n, p=_REGION[1])
        if "age" in s:
            age = np.clip(age - 9, 18, 90)
        logit = (-1.2 - 0.012 * (credit - 690) + 3.5 * (dti - 0.24) - 0.25 * np.log(income / 58_000)
                 + 0.25 * np.log(loan / 14_000) + 0.4 * (purpose == "small_business"))
        score = 1.0 / (1.0 + np.exp(-logit))
        return {"age": age, "income": income.round(2), "loan_amount": loan, "loan_term_months": term,
                "credit_score": credit, "debt_to_income": dti.round(4), "open_accounts": accounts,
                "months_since_delinquency": delinquency, "employment_years": employment,
                "home_ownership": home, "loan_purpose": purpose, "region": region,
                "prediction": score.round(6)}

    def events(self, n: int, now: float | None = None) -> list[dict[str, Any]]:
        cols = self.columns(n)
        latency = self.rng.lognormal(np.log(18), 0.5, n).round(2)
        t = time.time() if now is None else now
        out = []
        for i in range(n):
            feats: dict[str, Any] = {}
            for name in NUMERICAL:
                v = float(cols[name][i])
                if v == v:  # leave missing values out of the event, as serving code does
                    feats[name] = v
            for name in CATEGORICAL:
                feats[name] = str(cols[name][i])
            score = float(cols["prediction"][i])
            out.append({"request_id": uuid.UUID(int=int(self.rng.integers(0, 2**63))).hex, "ts": t,
                        "model": {"name": "credit-risk", "version": MODEL_VERSION}, "features": feats,
                        "prediction": {"score": score, "label": "decline" if score > 0.5 else "approve"},
                        "latency_ms": float(latency[i])})
        return out


def encode(events: Iterable[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(e, separators=(",", ":")).encode() for e in events]


def write_training_data(path: Path, rows: int = 50_000, seed: int = 1) -> Path:
    """Training data from the unshifted distributions, as Parquet (or CSV by suffix)."""
    import pandas as pd

    frame = pd.DataFrame(TrafficModel(seed=seed).columns(rows))
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def monitor_config(name: str, bootstrap: str, topic: str, reference: Path, **overrides: Any) -> dict[str, Any]:
    """A monitor's configuration for this traffic (a dict, as it would be read from YAML)."""
    conf: dict[str, Any] = {
        "name": name,
        "kafka": {"bootstrap_servers": [bootstrap], "topic": topic, "group_id": f"driftline-{name}",
                  "auto_offset_reset": "earliest"},
        "reference": {"path": str(reference)},
        "event": {
            "features": {f: {"path": f"features.{f}"} for f in FEATURES},
            "event_time": {"path": "ts", "format": "epoch_seconds"},
            "prediction": {"path": "prediction.score", "column": "prediction"},
            "latency": {"path": "latency_ms", "unit": "ms"},
            "model_version": {"path": "model.version"},
            "allowed_extra_fields": ["request_id", "model.name", "prediction.label"],
        },
        "window": {"type": "time", "size": "15s", "allowed_lateness": "2s", "min_events": 200},
        "drift": {"drift_share": 0.2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(conf.get(key), dict):
            conf[key] = {**conf[key], **value}
        else:
            conf[key] = value
    return conf
