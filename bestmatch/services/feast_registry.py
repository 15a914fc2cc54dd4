"""Feast's registry kept in step with the feature definitions (`feast apply` when they change)."""

from __future__ import annotations

from features.settings import Settings


def ensure_feast_registry(settings: Settings) -> bool:
    """`feast apply` for the derived objects, skipped (without importing Feast, which takes
    seconds) while the registry was applied from the same definitions."""
    import hashlib

    from features import specs
    from features.registry import REPO_PATH

    source = (REPO_PATH / "feast_repo.py").read_bytes() + repr(specs.FEATURES).encode()
    fingerprint = hashlib.sha256(source + settings.feast_project.encode()).hexdigest()
    marker = REPO_PATH / "data" / "registry.fingerprint"
    registry = REPO_PATH / "data" / "registry.db"
    if registry.exists() and marker.exists() and marker.read_text() == fingerprint:
        return False
    from features.registry import ensure_registry

    applied = ensure_registry(settings)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
    return applied
