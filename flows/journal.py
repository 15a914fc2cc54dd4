"""A shard's state on disk: a base and a journal of what changed since, so that an epoch's
recovery cost follows what changed in it, not the size of the state.

Bytewax snapshots every stateful key at each epoch and keeps the latest committed snapshot. A
shard's snapshot is only a reference, `(generation, offset)`: the state itself lives here, as

    <dir>/base-<generation>      the whole engine, pickled, written once per generation
    <dir>/journal-<generation>   one record per epoch: `ShardEngine.export_delta()`, pickled

An epoch appends the entities it touched (their columns), the exits and profiles it added and a
few scalars: with a million entities of which one per cent changed, a record is a few hundred
kilobytes, where a whole pickle is hundreds of megabytes. The journal is flushed and fsynced
before the reference is handed to Bytewax, so a committed epoch's reference always finds its
bytes.

Resuming from `(g, offset)` reads base-g and the journal up to `offset`. Bytes past it (an epoch
that never committed) are cut off, and later generations are removed, so the state continues
exactly from the committed epoch. Once a journal outgrows its base, the next epoch writes a new
base; the two generations before the current one are kept, since Bytewax may resume from an
epoch whose snapshot was taken before the newest.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

from features.engine import ShardEngine

Reference = tuple[int, int]
_LENGTH = struct.Struct("<Q")
_MIN_JOURNAL = 16 << 20  # a journal below this never triggers a new base
KEEP_GENERATIONS = 3


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """One shard's base and journal in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.generation = -1
        self.offset = 0
        self.base_bytes = 0
        self.last_bytes = 0  # what the latest save wrote

    def _base(self, generation: int) -> Path:
        return self.directory / f"base-{generation}"

    def _journal(self, generation: int) -> Path:
        return self.directory / f"journal-{generation}"

    def save(self, engine: ShardEngine) -> Reference:
        """The state as of now, durably; the reference to hand to Bytewax."""
        if self.generation < 0 or self.offset > max(self.base_bytes, _MIN_JOURNAL):
            return self._save_base(engine)
        record = pickle.dumps(engine.export_delta(), protocol=pickle.HIGHEST_PROTOCOL)
        with self._journal(self.generation).open("ab") as out:
            out.write(_LENGTH.pack(len(record)))
            out.write(record)
            out.flush()
            os.fsync(out.fileno())
        self.offset += _LENGTH.size + len(record)
        self.last_bytes = _LENGTH.size + len(record)
        return self.generation, self.offset

    def _save_base(self, engine: ShardEngine) -> Reference:
        generation = self.generation + 1
        engine.mark_exported()
        data = pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL)
        draft = self._base(generation).with_suffix(".draft")
        with draft.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        draft.rename(self._base(generation))
        self._journal(generation).write_bytes(b"")
        _fsync_dir(self.directory)
        self.generation, self.offset, self.base_bytes = generation, 0, len(data)
        self.last_bytes = len(data)
        self._remove(lambda g: g <= generation - KEEP_GENERATIONS)
        return generation, 0

    def load(self, reference: Reference) -> ShardEngine:
        """The state a reference names; the journal continues from it."""
        generation, offset = reference
        self._remove(lambda g: g > generation)
        engine: ShardEngine = pickle.loads(self._base(generation).read_bytes())
        deltas: list[dict[str, Any]] = []
        with self._journal(generation).open("r+b") as journal:
            data = journal.read(offset)
            journal.truncate(offset)
        position = 0
        while position < len(data):
            (length,) = _LENGTH.unpack_from(data, position)
            position += _LENGTH.size
            deltas.append(pickle.loads(data[position : position + length]))
            position += length
        self.generation, self.offset = generation, offset
        self.base_bytes = self._base(generation).stat().st_size
        return ShardEngine.restore(engine, deltas)

    def _remove(self, doomed: Any) -> None:
        for path in self.directory.iterdir():
            name, _, number = path.name.partition("-")
            if name in ("base", "journal") and number.isdigit() and doomed(int(number)):
                path.unlink()
