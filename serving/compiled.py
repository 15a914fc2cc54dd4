"""The champion's trees compiled to machine code (lleaves, on LLVM), for the scores.

LightGBM walks each tree as data: for the demo's model (50 trees of 31 leaves), `predict` of
50 rows through its C API took 150 µs, most of an answer's CPU after the HTTP stack. lleaves
compiles the trees into native code (nested branches, each threshold a constant): 44 µs for the
same rows. The scores are LightGBM's bit for bit where the trees' outputs are added in tree order,
as LightGBM adds them: lleaves' cache blocking, which adds them block by block (off by 1e-15),
is off (`fblocksize` = the number of trees).

That is checked, not assumed: a compiled model is used only if it scores a check matrix exactly as
LightGBM does (rows built from the model's own thresholds, each value on either side of every
split, and missing values). Where it does not, or lleaves cannot be imported, or compiling fails,
LightGBM scores (`model.MatrixPredictor`) and the log says why. Explanations (`pred_contrib`)
always come from LightGBM.

Compiling takes seconds (about 3 s for 50 trees; lleaves builds the IR in Python), so it runs in
a process of its own (`serving.compiled.main`) at nice 19: in the service's process it would
hold the GIL for those seconds, and a hot swap would slow the answers it overlapped. Its object code
goes to a cache file named by what it depends on (the model's text, lleaves' and llvmlite's
versions, the host's CPU and its features: code built for one CPU's features may not run on
another), written whole or not at all, under a lock: a second worker, or a restart, loads it in
milliseconds.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.priority import lower_priority

if TYPE_CHECKING:  # not imported in the compiling process, which needs only lleaves
    import lightgbm as lgb

log = logging.getLogger("bestmatch.serving")

COMPILE_TIMEOUT_S = 600.0
"""The longest a compilation may take (a forest of thousands of trees takes minutes)."""
COMPILER_NICE = 19
ZERO_BAND = float(np.float32(1e-35))
"""LightGBM's `kZeroThreshold`: its predictor reads a value this close to 0 as 0 (it drops it
from the row it builds), so a split on a threshold inside the band (LightGBM puts thresholds at
±1e-35 to split 0 from the rest) sees 0. The compiled trees compare the value itself: such
values are set to 0 first."""
_ENTRY = "forest_root"  # lleaves' entry point: (rows, out, first row, end row)
_ENTRY_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32
)


def default_cache() -> Path:
    """`$XDG_CACHE_HOME/bestmatch/compiled` (`~/.cache/...` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bestmatch" / "compiled"


class CompiledPredictor:
    """Scores rows with the compiled trees: one C call, on the calling thread (the call releases
    the GIL). Arrays go as plain addresses, as in `MatrixPredictor` (no reference cycles)."""

    def __init__(self, engine: Any, address: int, columns: int, path: Path) -> None:
        self._engine = engine  # the code lives as long as its execution engine
        self._entry = _ENTRY_TYPE(address)
        self.columns = columns
        self.path = path

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        rows = matrix.shape[0]
        if matrix.shape[1] != self.columns:
            msg = f"the model reads {self.columns} columns, not {matrix.shape[1]}"
            raise ValueError(msg)
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        tiny = np.abs(matrix) <= ZERO_BAND  # NaN is not
        if tiny.any():  # rare: copied, as LightGBM reads them
            matrix = np.where(tiny, 0.0, matrix)
        out = np.empty(rows, dtype=np.float64)
        self._entry(matrix.ctypes.data, out.ctypes.data, 0, rows)
        return out


def compiled_predictor(
    booster: lgb.Booster,
    reference: Callable[[np.ndarray], np.ndarray],
    cache: Path,
    label: str,
) -> CompiledPredictor | None:
    """The booster's trees compiled (from `cache`, or compiled now in a process of its own),
    checked against `reference` (LightGBM's scores: a callable taking a matrix); None, with a
    warning naming `label` and why, where they cannot be used."""
    try:
        predictor = _load(booster, cache)
    except Exception as exc:  # noqa: BLE001 - any failure: LightGBM scores instead
        log.warning("%s: scored by LightGBM, not compiled: %s", label, exc)
        return None
    rows = check_rows(booster)
    expected, got = reference(rows), predictor.predict(rows)
    if not np.array_equal(expected, got):
        differ = int(np.sum(expected != got))
        log.warning(
            "%s: scored by LightGBM: the compiled trees score %d of %d check rows otherwise "
            "(by up to %.3g)",
            label,
            differ,
            len(rows),
            float(np.nanmax(np.abs(expected - got))),
        )
        return None
    return predictor


def _load(booster: lgb.Booster, cache: Path) -> CompiledPredictor:
    import llvmlite.binding as llvm
    from lleaves.llvm_binding import compile_module_to_asm

    text = booster.model_to_string()
    llvm.initialize()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # as lleaves has it: features LLVM cannot detect are none
        features = ""
    versions = " ".join(importlib.metadata.version(p) for p in ("lleaves", "llvmlite"))
    target = f"{llvm.get_process_triple()} {llvm.get_host_cpu_name()} {features}"
    key = hashlib.sha256(f"{versions}\n{target}\n{text}".encode()).hexdigest()[:40]
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{key}.o"
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker compiling it: wait, then load it
        if not path.exists():
            _compile_apart(text, booster.num_trees(), path)
    engine = compile_module_to_asm(llvm.parse_assembly(""), str(path))
    return CompiledPredictor(
        engine, engine.get_function_address(_ENTRY), booster.num_feature(), path
    )


def _compile_apart(text: str, trees: int, path: Path) -> None:
    """Compile the model's text to `path` in a process of its own (this module's `main`)."""
    with tempfile.TemporaryDirectory(prefix="bestmatch-compile-") as work:
        model = Path(work) / "model.txt"
        model.write_text(text)
        code = "from serving.compiled import main; main()"
        args = [sys.executable, "-c", code, str(model), str(trees), str(path)]
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
        )
    if done.returncode != 0 or not path.exists():
        lines = (done.stderr or done.stdout or "no output").strip().splitlines()
        msg = f"compiling failed (exit {done.returncode}): {lines[-1] if lines else ''}"
        raise RuntimeError(msg)


def main() -> None:
    """The compiling process: argv = model file, number of trees, object file to write."""
    model, trees, path = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    lower_priority(COMPILER_NICE)  # where refused: compiled at the service's priority
    import lleaves

    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        compiled = lleaves.Model(model_file=model)
        compiled.compile(cache=str(partial), fblocksize=max(1, trees))
        os.replace(partial, path)  # whole or not at all
    finally:
        partial.unlink(missing_ok=True)


def check_rows(booster: lgb.Booster, count: int = 2048, seed: int = 0) -> np.ndarray:
    """Rows whose values sit on every threshold of the model and on either side of it: per
    feature, values drawn from its thresholds, the nearest numbers above and below them, its
    categories, missing (NaN), 0 and extremes."""
    width = booster.num_feature()
    values: list[set[float]] = [{np.nan, 0.0, -1e300, 1e300} for _ in range(width)]
    stack = [tree["tree_structure"] for tree in booster.dump_model()["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_feature" not in node:
            continue
        feature, threshold = node["split_feature"], node["threshold"]
        if isinstance(threshold, str):  # categorical: "1||3||7"
            values[feature].update(float(c) for c in threshold.split("||"))
        else:
            t = float(threshold)
            values[feature].update((t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)))
        stack += (node["left_child"], node["right_child"])
    rng = np.random.default_rng(seed)
    columns = [rng.choice(np.array(sorted(v, key=repr)), size=count) for v in values]
    return np.ascontiguousarray(np.stack(columns, axis=1), dtype=np.float64)
