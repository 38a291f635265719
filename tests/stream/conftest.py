"""Helpers the stream tests share: a replay with a model trained on its first half, and a worker
of both stages on it with the memory store and list sinks (no server)."""
from __future__ import annotations

from models.artifacts import load
from stream.bootstrap import Worker, build_worker
from stream.cli.jobs import load_replay, train_model
from stream.settings import Settings
from stream.stores.memory import MemoryStore
from stream.worker.in_memory import list_sinks


def trained_replay(data, tmp_path_factory, name: str) -> tuple:
    """(dataset, events in replay order, a model trained on the first half of ``data``)."""
    path = tmp_path_factory.mktemp(name) / "m.joblib"
    train_model(data, path, train_fraction=0.5)
    ds, events = load_replay(data, progress=False)
    return ds, events, load(path)


def memory_worker(parts: tuple, partitions: int = 1, sinks=None, sensors=None) -> Worker:
    """Both stages with ``partitions`` partitions each over ``parts`` (``trained_replay``)."""
    ds, _, art = parts
    settings = Settings(partitions=partitions, warm_partitions=partitions, model_path="/nonexistent",
                        redis_url="redis://127.0.0.1:1/0")
    return build_worker(settings, store=MemoryStore(), catalogue=ds.catalogue, artifact=art,
                        sinks=sinks or list_sinks(), sensors=sensors)
