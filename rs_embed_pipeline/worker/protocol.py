"""The orchestrator <-> worker contract: what the embedding assets send the model worker and what
it reports back, as dataclasses with their JSON form in one place.

Both environments import this module (the orchestrator with Dagster, the worker with torch), so it
imports neither. Every message key is spelled here only:

* the request travels as the Pipes ``extras`` (:meth:`EmbedRequest.to_extras` /
  :meth:`EmbedRequest.from_extras`): the model, its ``load_adapter`` options, the modality, and
  per partition (``region|window``) one patch store to read and one embedding store to write;
* the worker sends Pipes custom messages: :func:`progress_message` while a store is embedded,
  one :class:`PartitionResult` per partition when it is done, or one :class:`StoreFailure` (a
  store that is not ours or was built with other settings: retrying cannot help) and stops;
* the orchestrator reads them back with :func:`read_messages` (a :class:`WorkerReport`).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Iterable, Mapping

PROGRESS_EVERY = 10  # batches between progress reports (the request's default)
#: What an embedding store holds (the model resources' ``outputs``): the arrays of each choice.
OUTPUTS: dict[str, tuple[str, ...]] = {"pooled": ("pooled",), "grid": ("grid",), "both": ("pooled", "grid")}


def check_outputs(value: Any) -> str:
    """``value`` if it is one of :data:`OUTPUTS`' keys, else a ValueError naming it and the choices."""
    if value not in OUTPUTS:
        raise ValueError(f"outputs {value!r} is not one of {', '.join(OUTPUTS)}")
    return str(value)

# Message kinds: the one key that tells a custom message's kind.
_PROGRESS = "progress"
_RESULT = "partition"
_STORE_ERROR = "store_error"
_FAILED_PARTITION = "failed_partition"


@dataclasses.dataclass(frozen=True)
class PartitionJob:
    """One partition's stores: the worker embeds the ok tiles of ``patches_uri`` into ``embeddings_uri``."""

    key: str              # partition key, "region|window"
    patches_uri: str
    embeddings_uri: str


@dataclasses.dataclass(frozen=True)
class EmbedRequest:
    """What the embeddings asset asks the worker to do (the Pipes extras)."""

    model: str                       # load_adapter name, e.g. "terrafm_b"
    modality: str                    # "s2" | "s1"
    partitions: tuple[PartitionJob, ...]
    adapter_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    code_version: str = ""
    rebuild: bool = False            # accept a store built with other settings (every tile redone)
    force: bool = False              # redo every tile although the settings match
    storage_options: Mapping[str, Any] | None = None
    progress_every: int = PROGRESS_EVERY
    outputs: str = "both"            # pooled | grid | both: the embedding store's arrays
    grid_dtype: str = "float32"      # float32 | float16 | bfloat16: the grid's stored type
    io_threads: int | None = None    # the worker's read and write threads; None: RS_EMBED_IO_THREADS

    def to_extras(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["partitions"] = [dataclasses.asdict(p) for p in self.partitions]
        out["adapter_options"] = dict(self.adapter_options)
        return out

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any]) -> EmbedRequest:
        missing = [k for k in ("model", "modality", "partitions") if k not in extras]
        if missing:
            raise ValueError(f"worker request lacks {missing}; got keys {sorted(extras)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(extras) - fields)
        if unknown:
            raise ValueError(f"worker request has unknown keys {unknown}; valid: {sorted(fields)}")
        return cls(**{
            **extras,
            "partitions": tuple(PartitionJob(**p) for p in extras["partitions"]),
            "adapter_options": dict(extras.get("adapter_options") or {}),
            "code_version": str(extras.get("code_version") or ""),
            "rebuild": bool(extras.get("rebuild")),
            "force": bool(extras.get("force")),
            "progress_every": int(extras.get("progress_every") or PROGRESS_EVERY),
            "outputs": str(extras.get("outputs") or "both"),
            "grid_dtype": str(extras.get("grid_dtype") or "float32"),
            "io_threads": None if extras.get("io_threads") is None else int(extras["io_threads"]),
        })


@dataclasses.dataclass(frozen=True)
class StoreResult:
    """What embedding one patch store did (``worker.embed.embed_store``)."""

    embeddings_uri: str
    patches_uri: str
    size_px: int
    tiles_total: int
    tiles_embedded_now: int
    tiles_skipped_done: int
    tiles_recomputed_for_alignment: int
    counts: dict[str, int]             # the embedding store's tiles per status, after the run
    timings: dict[str, float]          # seconds: read_s, prepare_s, embed_s, write_s, wall_s, waits
    model_busy_fraction: float         # forward pass / wall time of the store
    tiles_per_s: float
    nonfinite_values: int
    embed_meta: dict[str, Any]         # the adapter's output meta (precision, ...)
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StoreResult:
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class PartitionResult:
    """The worker's report for one partition: its store's result and the adapter's settings."""

    partition: str
    adapter: dict[str, Any]            # adapter.describe()
    store: StoreResult

    def to_message(self) -> dict[str, Any]:
        return {_RESULT: self.partition, "adapter": self.adapter, "store": self.store.to_dict()}

    @classmethod
    def from_message(cls, m: Mapping[str, Any]) -> PartitionResult:
        return cls(partition=str(m[_RESULT]), adapter=dict(m["adapter"]), store=StoreResult.from_dict(m["store"]))


@dataclasses.dataclass(frozen=True)
class StoreFailure:
    """A store the worker refused (not a store of this kind, or other settings): nothing was touched."""

    partition: str
    message: str

    def to_message(self) -> dict[str, Any]:
        return {_STORE_ERROR: self.message, _FAILED_PARTITION: self.partition}

    @classmethod
    def from_message(cls, m: Mapping[str, Any]) -> StoreFailure:
        return cls(partition=str(m.get(_FAILED_PARTITION, "")), message=str(m[_STORE_ERROR]))


def progress_message(partition: str, progress: Mapping[str, Any]) -> dict[str, Any]:
    """A progress report (``embed_store``'s progress dict) as a custom message."""
    return {_PROGRESS: {"partition": partition, **progress}}


def progress_of(message: Any) -> dict[str, Any] | None:
    """The progress dict of a custom message, None for other messages."""
    return dict(message[_PROGRESS]) if isinstance(message, Mapping) and _PROGRESS in message else None


@dataclasses.dataclass(frozen=True)
class WorkerReport:
    """Every partition result and store failure among a worker's custom messages."""

    results: tuple[PartitionResult, ...]
    failures: tuple[StoreFailure, ...]


def read_messages(messages: Iterable[Any]) -> WorkerReport:
    """The results and store failures of a worker invocation's custom messages (progress skipped)."""
    results, failures = [], []
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        if _STORE_ERROR in m:
            failures.append(StoreFailure.from_message(m))
        elif _RESULT in m and _PROGRESS not in m:
            results.append(PartitionResult.from_message(m))
    return WorkerReport(tuple(results), tuple(failures))
