"""The lake's tables beyond the change log's layout: dead letters, snapshots, maintenance."""

from __future__ import annotations

import re
from collections import Counter

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from features import offline_layout
from features.errors import StoreError
from features.settings import Settings
from features.specs import ENTITIES, Entity, view_name

ANSI = re.compile(r"\x1b\[[0-9;]*m")
S3_CODE = re.compile(r"<Code>([^<]*)</Code>")
S3_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("seen", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def dead_letter_uri(settings: Settings) -> str:
    return settings.lake_path("dead_letters")


def snapshot_uri(settings: Settings, entity: Entity) -> str:
    return settings.lake_path("snapshot", view_name(entity))


def open_table(settings: Settings, uri: str) -> DeltaTable | None:
    """The Delta table at `uri` in the settings' lake, or None where there is none yet."""
    options = settings.storage_options
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return None
    return DeltaTable(uri, storage_options=options)


def check_lake(settings: Settings) -> None:
    """Fail at once, in one line, when an object-store lake cannot be reached (a wrong
    endpoint, no such bucket, refused keys), rather than deep in a flow or a training run."""
    if settings.lake_is_local:
        return
    try:
        open_table(settings, offline_layout.changelog_uri(settings, ENTITIES[0]))
    except OSError as exc:
        raise StoreError(lake_error(settings, exc)) from None


def lake_error(settings: Settings, exc: BaseException) -> str:
    """One line for a store error: the lake, the variables to look at, delta-rs's last cause."""
    causes = [ANSI.sub("", line).strip(" ↳\t") for line in str(exc).splitlines()]
    causes = [c for c in causes if c]
    reason = causes[-1] if causes else type(exc).__name__
    code, message = S3_CODE.search(str(exc)), S3_MESSAGE.search(str(exc))
    if code and message:  # an S3 error document: its code and message, not the XML
        reason = f"{code.group(1)}: {message.group(1)}"
    reason = reason if len(reason) <= 160 else reason[:157] + "..."
    return (
        f"the lake {settings.lake} cannot be used (BESTMATCH_LAKE, AWS_ENDPOINT_URL, "
        f"AWS_* keys): {reason}"
    )


def offline_tables(settings: Settings) -> dict[str, str]:
    """Every offline table's name and URI."""
    tables = {view_name(e): offline_layout.changelog_uri(settings, e) for e in ENTITIES}
    tables["dead_letters"] = dead_letter_uri(settings)
    return tables


def latest_values(settings: Settings, entity: Entity) -> pa.Table:
    """Each entity's latest change-log row (its current values)."""
    table = open_table(settings, offline_layout.changelog_uri(settings, entity))
    if table is None:
        return offline_layout.changelog_schema(entity).empty_table()
    import polars as pl

    frame = pl.from_arrow(table.to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    latest = (
        frame.sort([offline_layout.TIMESTAMP_COLUMN, offline_layout.CREATED_COLUMN])
        .group_by(entity.join_key, maintain_order=True)
        .last()
    )
    return latest.sort(entity.join_key).to_arrow()


def write_snapshots(settings: Settings) -> list[tuple[str, str]]:
    """Complete output mode: every entity's current values, as a new version of a Delta table."""
    rows = []
    for entity in ENTITIES:
        current = latest_values(settings, entity)
        uri = snapshot_uri(settings, entity)
        options = settings.storage_options
        write_deltalake(
            uri, current, mode="overwrite", schema_mode="overwrite", storage_options=options
        )
        version = DeltaTable(uri, storage_options=options).version()
        rows.append((f"{view_name(entity)} v{version}", f"{current.num_rows:,} entities"))
    return rows


def compact_tables(settings: Settings) -> list[tuple[str, str]]:
    """Compact every offline table's small files, then vacuum what no version needs."""
    rows = []
    for name, uri in offline_tables(settings).items():
        table = open_table(settings, uri)
        if table is None:
            continue
        before = len(table.file_uris())
        metrics = table.optimize.compact()
        removed = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
        after = len(DeltaTable(uri, storage_options=settings.storage_options).file_uris())
        rows.append(
            (
                name,
                f"{before} → {after} files, {len(removed)} vacuumed, "
                f"{metrics.get('numFilesRemoved', 0)} compacted",
            )
        )
    return rows


def summarize_lake(settings: Settings, elapsed_s: float | None = None) -> list[tuple[str, str]]:
    """Row counts of the offline tables, and dead letters by reason."""
    rows = []
    total = 0
    for name, uri in offline_tables(settings).items():
        table = open_table(settings, uri)
        count = (
            0
            if table is None
            else int(
                pa.table(table.get_add_actions(flatten=True)).column("num_records").to_numpy().sum()
            )
        )
        if name != "dead_letters":
            total += count
        rows.append((f"{name} rows", f"{count:,}"))
    dead = open_table(settings, dead_letter_uri(settings))
    if dead is not None:
        reasons = Counter(
            reason.split(":")[0]
            for reason in dead.to_pyarrow_table(columns=["reason"])["reason"].to_pylist()
        )
        for reason, count in reasons.most_common():
            rows.append((f"  dead letters: {reason}", f"{count:,}"))
    if elapsed_s:
        rows.append(("change rows/s", f"{total / elapsed_s:,.0f}"))
    return rows
