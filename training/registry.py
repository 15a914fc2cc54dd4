"""MLflow: the run, the logged booster, registration and the champion alias.

Everything goes through the tracking URI of `Settings` (`MLFLOW_TRACKING_URI`, else a SQLite file
in a local lake), set inside the functions that need it and never at import. With a SQLite or
file store the artifacts go beside it (`<dir of the db>/mlartifacts`), not into the working
directory.

The model is the LightGBM *booster* (the sklearn wrapper pickles types MLflow refuses), logged with
a signature (one double column per model feature, missing values as NaN), an input example and the
exact ordered feature list in the model's metadata (`features`), as a run param and as an artifact.

Promotion: every run registers a new version of `bestmatch-ranker`. The current champion, if any,
is scored on the *new* test set; the new version takes the `champion` alias only when its NDCG@10
beats the champion's by more than `MIN_GAIN` (float noise), and is otherwise marked `challenger`,
with the reason. A champion whose feature list this code cannot build is replaced, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import polars as pl
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from features.settings import Settings

MODEL_NAME = "bestmatch-ranker"
EXPERIMENT_NAME = "bestmatch-ranker"
CHAMPION = "champion"
CHALLENGER = "challenger"
COMPARE_METRIC = "ndcg@10"
MIN_GAIN = 1e-9
ARTIFACT_DIR = "mlartifacts"


def tracking_client(settings: Settings) -> MlflowClient:
    """A client on the configured tracking (and registry) URI; also the fluent API's URI."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_location(tracking_uri: str) -> str | None:
    """Beside a local store; None (the server's default) for a tracking server."""
    parts = urlsplit(tracking_uri)
    if parts.scheme == "sqlite":
        return str(Path(tracking_uri.removeprefix("sqlite:///")).parent / ARTIFACT_DIR)
    if parts.scheme in ("", "file"):
        return str(Path(parts.path or tracking_uri) / ARTIFACT_DIR)
    return None


def experiment_id(client: MlflowClient) -> str:
    found = client.get_experiment_by_name(EXPERIMENT_NAME)
    if found is not None:
        return str(found.experiment_id)
    location = _artifact_location(client.tracking_uri)
    artifact = Path(location).resolve().as_uri() if location else None
    return str(client.create_experiment(EXPERIMENT_NAME, artifact_location=artifact))


@dataclass(frozen=True, slots=True)
class Champion:
    """The current champion, and its score on the new test set (None: it cannot be scored)."""

    version: str
    score: float | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Promotion:
    version: str
    alias: str  # CHAMPION or CHALLENGER
    promoted: bool
    reason: str
    new_score: float
    champion: Champion | None


def current_champion(client: MlflowClient) -> str | None:
    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except MlflowException:
        return None


def load_ranker(version: str) -> Any:
    """A registered version as a pyfunc model (its metadata holds the feature list)."""
    return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")


def model_features(model: Any) -> list[str]:
    metadata = model.metadata.metadata or {}
    return list(metadata.get("features", []))


def score_with(model: Any, inputs: pl.DataFrame) -> np.ndarray | None:
    """A pyfunc model's scores on `inputs`, or None if it needs a feature `inputs` lacks."""
    features = model_features(model)
    if not features or not set(features) <= set(inputs.columns):
        return None
    return np.asarray(model.predict(inputs.select(features).to_pandas()), dtype=np.float64)


def log_ranker(
    booster: lgb.Booster,
    features: Sequence[str],
    example: pl.DataFrame,
    *,
    metadata: Mapping[str, Any],
) -> str:
    """Log the booster in the active run and register it; returns the new version."""
    inputs = example.select(features).to_pandas()
    signature = infer_signature(inputs, booster.predict(inputs.to_numpy()))
    info = mlflow.lightgbm.log_model(
        booster,
        name="model",
        signature=signature,
        input_example=inputs.head(5),
        registered_model_name=MODEL_NAME,
        metadata={**metadata, "features": list(features)},
        pip_requirements=_requirements(),
    )
    version = info.registered_model_version
    if version is None:
        msg = f"MLflow did not register {MODEL_NAME}"
        raise MlflowException(msg)
    return str(version)


def _requirements() -> list[str]:
    return [f"lightgbm=={lgb.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


def promote(
    client: MlflowClient, version: str, new_score: float, champion: Champion | None
) -> Promotion:
    """Move `champion` to `version` when it beats the current one, else mark it `challenger`."""
    metric = COMPARE_METRIC.upper()
    if champion is None:
        promoted, reason = True, f"first model: no champion yet ({metric} {new_score:.4f})"
    elif champion.score is None:
        promoted = True
        reason = (
            f"champion v{champion.version} cannot be scored on this test set ({champion.reason})"
        )
    elif new_score > champion.score + MIN_GAIN:
        promoted = True
        reason = (
            f"beats champion v{champion.version} on the same test set: "
            f"{metric} {new_score:.4f} > {champion.score:.4f}"
        )
    else:
        promoted = False
        verb = "ties" if abs(new_score - champion.score) <= MIN_GAIN else "is below"
        reason = (
            f"{verb} champion v{champion.version} on the same test set: "
            f"{metric} {new_score:.4f} vs {champion.score:.4f}"
        )
    alias = CHAMPION if promoted else CHALLENGER
    client.set_registered_model_alias(MODEL_NAME, alias, version)
    client.set_model_version_tag(MODEL_NAME, version, "promotion", reason)
    return Promotion(version, alias, promoted, reason, new_score, champion)


def log_figures(figures: Mapping[str, Figure]) -> None:
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")


def as_params(values: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params are strings of at most 6000 characters."""
    return {key: str(value)[:6000] for key, value in values.items()}
