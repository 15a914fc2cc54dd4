"""The compiled trees (`serving.compiled`): LightGBM's scores bit for bit, or not used at all."""

from __future__ import annotations

import logging
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from serving import compiled
from serving.compiled import ZERO_BAND, check_rows, compiled_predictor


def _booster(objective: str, seed: int, categorical: bool = False, **more: object) -> lgb.Booster:
    """A real booster on data with missing values (and a categorical feature)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 10.0, size=(2000, 12))
    x[rng.random(x.shape) < 0.2] = np.nan
    if categorical:
        x[:, 0] = rng.integers(0, 12, size=len(x))
    signal = np.nan_to_num(x[:, 1]) + 3 * np.isin(x[:, 0], (2, 5, 7)) + rng.normal(size=len(x))
    params: dict[str, object] = {"objective": objective, "verbosity": -1, "num_threads": 1}
    params |= {"seed": seed, **more}
    if objective == "lambdarank":
        label = np.digitize(signal, np.quantile(signal, [0.5, 0.8, 0.95]))
        data = lgb.Dataset(x, label=label, group=[25] * 80)
    else:
        data = lgb.Dataset(x, label=(signal > np.median(signal)).astype(int))
    if categorical:
        data.categorical_feature = [0]  # type: ignore[assignment]
        params["min_data_per_group"] = 5
    return lgb.train(params, data, num_boost_round=40)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


@pytest.mark.parametrize(
    ("objective", "categorical"), [("lambdarank", False), ("binary", True)], ids=["rank", "cat"]
)
def test_compiled_trees_score_as_lightgbm_bit_for_bit(
    tmp_path: Path, objective: str, categorical: bool
) -> None:
    booster = _booster(objective, seed=1, categorical=categorical)
    predictor = compiled_predictor(booster, booster.predict, tmp_path, "test")
    assert predictor is not None
    rng = np.random.default_rng(2)
    for rows in (1, 7, 50, 3000):
        matrix = rng.normal(0.0, 12.0, size=(rows, booster.num_feature()))
        matrix[rng.random(matrix.shape) < 0.25] = np.nan
        tiny = rng.random(matrix.shape) < 0.05  # LightGBM reads these as 0
        matrix[tiny] = ZERO_BAND * rng.choice([-1.0, -0.5, 0.5, 1.0], size=int(tiny.sum()))
        if categorical:
            matrix[:, 0] = rng.integers(-1, 14, size=rows)
        expected = booster.predict(matrix, num_threads=1)
        assert (_bits(predictor.predict(matrix)) == _bits(expected)).all()
    # the check rows sit on the model's thresholds: each feature has many distinct values
    rows = check_rows(booster)
    assert min(len(np.unique(rows[:, j])) for j in range(rows.shape[1])) > 10
    assert (_bits(predictor.predict(rows)) == _bits(booster.predict(rows))).all()
    assert predictor.predict(np.empty((0, booster.num_feature()))).shape == (0,)
    with pytest.raises(ValueError, match="columns"):
        predictor.predict(np.zeros((2, 3)))


def test_a_compiled_model_is_kept_and_loaded_again_without_compiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    booster = _booster("lambdarank", seed=3)
    first = compiled_predictor(booster, booster.predict, tmp_path, "test")
    assert first is not None
    kept = sorted(tmp_path.glob("*.o"))
    assert kept == [first.path]

    def no_compiling(*_: object) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(compiled, "_compile_apart", no_compiling)
    again = compiled_predictor(booster, booster.predict, tmp_path, "test")
    assert again is not None and again.path == first.path
    matrix = check_rows(booster, count=64, seed=5)
    assert (_bits(again.predict(matrix)) == _bits(first.predict(matrix))).all()
    # another model is another file: it would be compiled
    other = _booster("lambdarank", seed=4)
    assert compiled_predictor(other, other.predict, tmp_path, "other") is None


def test_trees_that_score_otherwise_are_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The check compares with the reference bit for bit: one ulp off on some rows refuses."""
    booster = _booster("lambdarank", seed=5)

    def off_by_an_ulp(matrix: np.ndarray) -> np.ndarray:
        scores = np.asarray(booster.predict(matrix))
        scores[::7] = np.nextafter(scores[::7], np.inf)
        return scores

    with caplog.at_level(logging.WARNING, logger="bestmatch.serving"):
        assert compiled_predictor(booster, off_by_an_ulp, tmp_path, "m v9") is None
    assert "m v9: scored by LightGBM: the compiled trees score" in caplog.text


def test_a_model_that_cannot_be_compiled_is_scored_by_lightgbm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    booster = _booster("lambdarank", seed=6)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING, logger="bestmatch.serving"):
        assert compiled_predictor(booster, booster.predict, not_a_folder, "m v3") is None
    assert "m v3: scored by LightGBM, not compiled" in caplog.text


def test_linear_trees_which_lleaves_does_not_read_are_scored_by_lightgbm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    booster = _booster("lambdarank", seed=7, linear_tree=True)
    with caplog.at_level(logging.WARNING, logger="bestmatch.serving"):
        assert compiled_predictor(booster, booster.predict, tmp_path, "m v4") is None
    assert "m v4: scored by LightGBM" in caplog.text
