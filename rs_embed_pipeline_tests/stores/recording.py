"""The order in which a store's keys are written, for the status-last and marker-last tests."""

from __future__ import annotations

from zarr.storage import LocalStore


def record_store_writes(monkeypatch) -> list[tuple[str, str]]:
    """Record every key LocalStore writes, as ("start", key) before and ("done", key) after the write."""
    events: list[tuple[str, str]] = []
    original = LocalStore.set

    async def recording_set(self, key, value):
        events.append(("start", key))
        await original(self, key, value)
        events.append(("done", key))

    monkeypatch.setattr(LocalStore, "set", recording_set)
    return events
