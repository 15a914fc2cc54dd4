"""Training: point-in-time training sets, the LightGBM ranker, evaluation, MLflow registration.

What it offers (imported lazily: `import training` loads neither LightGBM nor MLflow):

- `train(settings, *, events, seed, horizon, window, params, progress) -> TrainReport`:
  everything `bestmatch train` does (`training.pipeline`).
- `build_training_set(settings, events, ...) -> TrainingSet` (`training.dataset`) and
  `historical_features(settings, entity_rows, features)` (`training.point_in_time`).

Modules: `proposals` (entity rows, ranking moment, labels), `point_in_time` (the fast path),
`feast_reference` (the Feast path), `dataset`, `ranker`, `evaluation`, `plots`, `registry`
(MLflow), `pipeline`. The model's feature list and input function live in
`features.ranking`, shared with serving.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "train": "training.pipeline",
    "TrainReport": "training.pipeline",
    "TRAIN_STAGES": "training.pipeline",
    "build_training_set": "training.dataset",
    "TrainingSet": "training.dataset",
    "historical_features": "training.point_in_time",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'training' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(import_module(module), name)
