"""The notebooks run top to bottom on a small backfilled market (nbclient, a real kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from bestmatch.simulator import simulate
from features.settings import Settings
from flows.runner import run_backfill
from tests.conftest import RedisServer

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Settings:
    root = tmp_path_factory.mktemp("notebooks")
    events = root / "events.jsonl"
    simulate(4, 11, events, jobs_per_day=40)
    settings = Settings(
        redis_url=f"{redis_server.url.rsplit('/', 1)[0]}/13",
        lake=str(root / "lake"),
        _env_file=None,
    )
    run_backfill(settings, events, checkpoint=False)
    return settings


def run_notebook(
    name: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> nbformat.NotebookNode:
    monkeypatch.setenv("BESTMATCH_LAKE", settings.lake)
    monkeypatch.setenv("BESTMATCH_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("BESTMATCH_EVENTS", str(Path(settings.lake).parent / "events.jsonl"))
    monkeypatch.setenv("BESTMATCH_HORIZON_HOURS", "12")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    return notebook


def images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_train_ranker_notebook_runs(small_lake: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = run_notebook("train_ranker.ipynb", small_lake, monkeypatch)
    assert images(notebook) == 3  # importance, NDCG by slice, scores by label
    text = "".join(
        str(output.get("data", {}).get("text/plain", "")) + output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "ranker_no_streaming" in text and "newest_first" in text


def test_explore_features_notebook_runs(
    small_lake: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = run_notebook("explore_features.ipynb", small_lake, monkeypatch)
    assert images(notebook) == 2  # distributions, one freelancer over time


def test_notebooks_are_committed_without_outputs() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name
