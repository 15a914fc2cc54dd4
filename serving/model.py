"""The champion model: loaded from the MLflow registry, checked, and swapped when the alias moves.

The service serves `models:/bestmatch-ranker@champion`. The alias is resolved to a version first
and that version is loaded, so the version named in every answer is the one that scored it. The
LightGBM booster is used directly (not through pyfunc): a request is a small numpy matrix, and
`pred_contrib` gives the explanations. The scores come from its trees compiled to machine code
(`serving.compiled`) where those score exactly as LightGBM does, else from LightGBM.

A model whose feature list (the `features` metadata logged with it, and the booster's own names)
is not exactly `features.ranking.MODEL_FEATURES` cannot be fed by this code: at startup that stops
the service with a `ModelError` naming the difference; later, the new model is refused and the
current one stays.

`ChampionWatcher` polls the registry in a background thread. When the alias moves, the new version
is downloaded, checked and warmed up in that thread, then swapped in with one reference
assignment: a request reads `watcher.current` once and scores with that model to the end, so no
request ever sees half a swap or waits for a load.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from features.errors import ModelError
from features.ranking import MODEL_FEATURES
from features.settings import Settings
from serving.compiled import CompiledPredictor, compiled_predictor

MODEL_NAME = "bestmatch-ranker"  # the registered name (docs/contract.md §3), as training has it
CHAMPION = "champion"

log = logging.getLogger("bestmatch.serving")


class MatrixPredictor:
    """`booster.predict(matrix, num_threads=...)` (and with `pred_contrib=True`), with what
    `Booster.predict` rebuilds on every call (its inner predictor, the parameter string, the
    argument checks) built once per loaded model: one C call per request. It uses LightGBM's
    C API through the Python package's own handle to the library (`lightgbm.basic._LIB`, not
    public): `usable` is False where that is not there, and `LoadedRanker` then keeps to
    `Booster.predict`; a test holds the two to the same scores, bit for bit.

    The arrays are passed as plain addresses (they stay alive in `_predict`'s frame for the
    call), not through numpy's `ctypes.data_as`, which builds a reference cycle around the
    array: garbage only the cyclic GC frees. Measured in the service: two such cycles per
    request held each request's matrix until a collection, and every ~1,500 requests a
    generation-0 collection freeing them took 11-18 ms."""

    def __init__(self, booster: lgb.Booster, threads: int) -> None:
        self.booster = booster
        self.usable = False
        try:
            from lightgbm.basic import _LIB, _safe_call

            self._call = _LIB.LGBM_BoosterPredictForMat
            self._check = _safe_call
            self._handle = booster._handle
            self._parameters = f"num_threads={threads}".encode()
            self._iteration = ctypes.c_int(booster.best_iteration)  # as `Booster.predict` has it
            self._columns = ctypes.c_int32(booster.num_feature())
            self._per_row = booster.num_model_per_iteration()
        except (ImportError, AttributeError):
            return
        self.usable = self._per_row == 1

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """The scores, one per row."""
        return self._predict(matrix, _NORMAL, 1)[:, 0]

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """`pred_contrib`: per row, each feature's contribution, then the bias."""
        return self._predict(matrix, _CONTRIB, self._columns.value + 1)

    def _predict(self, matrix: np.ndarray, kind: ctypes.c_int, width: int) -> np.ndarray:
        rows = matrix.shape[0]
        if matrix.shape[1] != self._columns.value:
            msg = f"the model reads {self._columns.value} columns, not {matrix.shape[1]}"
            raise ValueError(msg)
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        out = np.empty((rows, width), dtype=np.float64)
        written = ctypes.c_int64(0)
        self._check(
            self._call(
                self._handle,
                ctypes.c_void_p(matrix.ctypes.data),
                _FLOAT64,
                ctypes.c_int32(rows),
                self._columns,
                _ROW_MAJOR,
                kind,
                _FIRST,
                self._iteration,
                self._parameters,
                ctypes.byref(written),
                ctypes.c_void_p(out.ctypes.data),
            )
        )
        if written.value != out.size:
            msg = f"LightGBM wrote {written.value} values for {rows} rows of {width}"
            raise ValueError(msg)
        return out


# The C API's constants (LightGBM's c_api.h), as `lightgbm.basic` passes them.
_FLOAT64 = ctypes.c_int(1)  # C_API_DTYPE_FLOAT64
_ROW_MAJOR = ctypes.c_int(1)
_NORMAL = ctypes.c_int(0)  # C_API_PREDICT_NORMAL
_CONTRIB = ctypes.c_int(3)  # C_API_PREDICT_CONTRIB
_FIRST = ctypes.c_int(0)  # start_iteration


@dataclass(frozen=True)
class LoadedRanker:
    """One registered version, ready to score."""

    name: str
    version: str
    booster: lgb.Booster
    features: tuple[str, ...]
    threads: int = 1
    predictor: MatrixPredictor | None = field(default=None, compare=False, repr=False)
    compiled: CompiledPredictor | None = field(default=None, compare=False, repr=False)
    """The scores' trees as machine code (`serving.compiled`), where they score as LightGBM."""

    def __post_init__(self) -> None:
        if self.predictor is None:
            predictor = MatrixPredictor(self.booster, self.threads)
            object.__setattr__(self, "predictor", predictor if predictor.usable else None)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        if self.compiled is not None and matrix.shape[0]:
            return self.compiled.predict(matrix)
        return self.lightgbm_predict(matrix)

    def lightgbm_predict(self, matrix: np.ndarray) -> np.ndarray:
        """The scores as LightGBM computes them (what `compiled` is checked against)."""
        if self.predictor is not None and matrix.shape[0]:
            return self.predictor.predict(matrix)
        return np.asarray(self.booster.predict(matrix, num_threads=self.threads))

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Per row, each feature's contribution to the score, then the bias (n x (F + 1))."""
        if self.predictor is not None and matrix.shape[0]:
            return self.predictor.contributions(matrix)
        return np.asarray(self.booster.predict(matrix, pred_contrib=True, num_threads=self.threads))


def check_features(version: str, logged: list[str], booster_names: list[str]) -> None:
    """Raise `ModelError` unless the model reads exactly `MODEL_FEATURES`, in order."""
    expected = list(MODEL_FEATURES)
    for what, names in (("its logged feature list", logged), ("its booster", booster_names)):
        if names == expected:
            continue
        extra = [n for n in names if n not in expected]
        lacking = [n for n in expected if n not in names]
        detail = (
            f"it has {extra or 'no'} extra and lacks {lacking or 'none'}"
            if extra or lacking
            else "same names, another order"
        )
        msg = (
            f"{MODEL_NAME} v{version}: {what} is not this code's MODEL_FEATURES ({detail}); "
            "retrain with `bestmatch train` or serve with the code that trained it"
        )
        raise ModelError(msg)


def load_version(
    settings: Settings, version: str, threads: int = 1, compiled_cache: Path | None = None
) -> LoadedRanker:
    """Download a registered version, check its features, warm it up. With `compiled_cache`,
    its scores come from its trees compiled (`serving.compiled`, cached there) where they score
    as LightGBM does."""
    import mlflow
    from mlflow.models import Model

    _use_registry(settings)
    with tempfile.TemporaryDirectory(prefix="bestmatch-model-") as workdir:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL_NAME}/{version}", dst_path=workdir
        )
        metadata = Model.load(local).metadata or {}
        booster = mlflow.lightgbm.load_model(local)
    if not isinstance(booster, lgb.Booster):
        msg = f"{MODEL_NAME} v{version} is a {type(booster).__name__}, not a LightGBM booster"
        raise ModelError(msg)
    check_features(version, list(metadata.get("features", [])), list(booster.feature_name()))
    ranker = LoadedRanker(MODEL_NAME, version, booster, tuple(MODEL_FEATURES), threads)
    if compiled_cache is not None:
        label = f"{MODEL_NAME} v{version}"
        found = compiled_predictor(booster, ranker.lightgbm_predict, compiled_cache, label)
        ranker = dataclasses.replace(ranker, compiled=found)
    warm = np.full((2, len(MODEL_FEATURES)), np.nan)
    ranker.predict(warm)
    ranker.contributions(warm)
    return ranker


def _use_registry(settings: Settings) -> str:
    """Point MLflow at the configured store. Global, and needed: `models:/` URIs (and the logged
    models they name) are resolved through MLflow's own clients, not one we pass."""
    import mlflow

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):  # a fresh lake: MLflow creates the database, not its folder
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def registry_client(settings: Settings) -> Any:
    from mlflow import MlflowClient

    uri = _use_registry(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion_version(client: Any) -> str | None:
    """The version the `champion` alias points at, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


class ChampionWatcher:
    """Holds the model being served and follows the `champion` alias in a background thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        poll_s: float,
        threads: int = 1,
        compiled_cache: Path | None = None,
        on_swap: Callable[[LoadedRanker], None] | None = None,
        on_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self.threads = threads
        self.compiled_cache = compiled_cache
        self.current: LoadedRanker | None = None
        self.last_error: str | None = None
        self._on_swap = on_swap or (lambda _ranker: None)
        self._on_failure = on_failure or (lambda _exc: None)
        self._client: Any = None
        self._refused: str | None = None  # a version already refused: not downloaded again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load_initial(self) -> None:
        """Load the champion now. No champion yet: not ready, and the watcher waits for one.
        A champion this code cannot feed: `ModelError`."""
        self._client = registry_client(self.settings)
        version = champion_version(self._client)
        if version is None:
            self.last_error = f"no version of {MODEL_NAME} has the alias @{CHAMPION} yet"
            log.warning("%s: not ready until one does", self.last_error)
            return
        self._swap(load_version(self.settings, version, self.threads, self.compiled_cache))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def check(self) -> bool:
        """One poll: load and swap in the champion if the alias moved. True if it swapped."""
        if self._client is None:
            self._client = registry_client(self.settings)
        version = champion_version(self._client)
        current = self.current.version if self.current else None
        if version is None or version == current or version == self._refused:
            return False
        try:
            ranker = load_version(self.settings, version, self.threads, self.compiled_cache)
        except ModelError as exc:
            self._refused = version
            self._failed(exc)
            return False
        self._swap(ranker)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as exc:  # the registry may be away for a while: keep serving
                self._failed(exc)

    def _swap(self, ranker: LoadedRanker) -> None:
        previous = self.current
        self.current = ranker  # one reference assignment: atomic for every reader
        self.last_error = None
        self._refused = None
        log.info(
            "serving %s v%s%s",
            ranker.name,
            ranker.version,
            f" (was v{previous.version})" if previous else "",
        )
        self._on_swap(ranker)

    def _failed(self, exc: Exception) -> None:
        self.last_error = str(exc)
        log.error("champion not loaded, still serving the current model: %s", exc)
        self._on_failure(exc)
