"""The user's documents hold what they promise: no path outside the repository, links that lead
somewhere, every setting documented, and every command line in the README one the command
accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from bestmatch.cli import app
from features.settings import Settings
from serving.config import ServingSettings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    suffixes = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".ipynb", ".txt"}
    return [ROOT / name for name in listed if Path(name).suffix in suffixes]


def test_the_contract_is_in_the_repository_and_the_readme_links_it() -> None:
    assert (ROOT / "docs" / "contract.md").is_file()
    assert "](docs/contract.md" in README.read_text()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_of_the_repository(document: Path) -> None:
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path = (document.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{document.name}: {target} is outside the repository"
        assert path.exists(), f"{document.name}: {target} does not exist"


def test_no_file_points_outside_the_repository() -> None:
    for path in tracked_text_files():
        if path == Path(__file__).resolve():  # names them, to look for them
            continue
        text = path.read_text(errors="replace")
        for outside in ("../shared", "shared/CONTRACT", "CONTRACT.md"):
            assert outside not in text, f"{path.relative_to(ROOT)} names {outside}"


def test_every_variable_is_in_the_readme() -> None:
    text = README.read_text()
    names = [
        str(field.validation_alias.choices[0])  # type: ignore[union-attr]
        if field.validation_alias
        else f"BESTMATCH_{name.upper()}"
        for name, field in Settings.model_fields.items()
    ]
    names += [f"BESTMATCH_SERVE_{name.upper()}" for name in ServingSettings.model_fields]
    missing = [name for name in names if f"`{name}`" not in text]
    assert not missing, f"not in the README: {missing}"


def readme_command_lines() -> list[list[str]]:
    """`uv run bestmatch ...` lines of the README's shell blocks, as words (comments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL):
        for line in block.splitlines():
            if line.startswith("uv run bestmatch "):
                lines.append(shlex.split(line, comments=True)[3:])
    return lines


def test_the_readme_shows_most_commands() -> None:
    shown = {words[0] for words in readme_command_lines()}
    assert {"simulate", "backfill", "stream", "publish", "train", "serve", "bench"} <= shown


@pytest.mark.parametrize("words", readme_command_lines(), ids=" ".join)
def test_readme_command_lines_are_accepted(words: list[str]) -> None:
    command = typer.main.get_command(app)
    rest = list(words)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):  # a group
        found = command.commands.get(rest.pop(0))
        assert found is not None, f"bestmatch {' '.join(words)}: no such command"
        command = found
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in rest:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"bestmatch {' '.join(words)}: no {word}"
