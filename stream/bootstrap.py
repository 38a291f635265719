"""The composition root: the one place that turns Settings into the worker's parts.

``build_worker(settings)`` builds every part the settings name; each part can be passed in
instead (a store, the catalogue, the models, the sinks), so tests hand it fakes, the way
cosmicpython's ``bootstrap`` does. Nothing is built or connected when this module is imported;
the Kafka sinks connect on their first flush."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from cache_warmer.experiment import AB, variant_of
from cache_warmer.policies import ThresholdPolicy
from cache_warmer.tiers import TIER_NAMES, TierConfig
from models.artifacts import Artifact, load
from models.events import Catalogue
from models.features import EngineConfig, FeatureEngine
from models.parsing import TimeWindow
from models.state import U_SESSION, U_TS, State

from .checkpoint import Checkpoint, Sensor
from .kafka_io import partition_of
from .partition_runtime import PartitionRuntime
from .settings import Settings
from .store import StateStore
from .sinks import KafkaSink, SharedProducer, Sink
from .stores import store_from_url

log = logging.getLogger(__name__)


def build_store(settings: Settings):
    """The state store named by SKIPCACHE_REDIS's scheme (see stream/stores)."""
    return store_from_url(settings.redis_url, settings.redis_prefix, int(settings.state_ttl_days * 86400))


def build_sinks(settings: Settings) -> tuple[Sink, Sink]:
    """Cache commands and dead letters, to their Kafka topics through one producer."""
    producer = SharedProducer(settings.kafka_bootstrap)
    return KafkaSink(settings.topic_commands, producer), KafkaSink(settings.topic_dead_letter, producer)


def load_catalogue(settings: Settings) -> Catalogue:
    if not settings.data_dir:
        log.warning("SKIPCACHE_DATA is not set: no catalogue (users, tracks, artists, storage)")
        return Catalogue()
    from .files import read_catalogue

    return read_catalogue(settings.data_dir).catalogue


@dataclass
class Worker:
    settings: Settings
    store: StateStore
    catalogue: Catalogue
    artifact: Artifact
    tier_config: TierConfig
    engine_config: EngineConfig
    artifact_b: Artifact | None = None
    checkpoint: Checkpoint | None = None
    """The batch commit (stream/checkpoint.py) with this worker's sinks and sensors."""
    runtimes: dict[int, PartitionRuntime] = field(default_factory=dict)
    thresholds: tuple[float, float] | None = None
    """(medium, fast) in force: read from Redis by refresh_thresholds, not on every access."""

    @property
    def variants(self) -> dict[str, Artifact]:
        return {"A": self.artifact, "B": self.artifact_b} if self.artifact_b is not None else {"A": self.artifact}

    def variant(self, user_id: int) -> str:
        return variant_of(user_id, self.settings.ab_share_b) if self.artifact_b is not None else "A"

    @property
    def models(self) -> dict[str, str]:
        """Variant -> the model name it serves."""
        return {v: a.model for v, a in self.variants.items()}

    @property
    def policy(self) -> ThresholdPolicy:
        threshold, fast = self.thresholds or (self.settings.threshold, self.settings.fast_threshold)
        return ThresholdPolicy("model", AB if self.artifact_b is not None else "A", threshold, fast)

    def runtime(self, partition: int) -> PartitionRuntime:
        rt = self.runtimes.get(partition)
        if rt is None:
            scorers = {name: art.predict_full for name, art in self.variants.items()}
            rt = self.runtimes[partition] = PartitionRuntime(
                partition, self.store, self.catalogue, scorers, self.policy, self.tier_config, self.engine_config,
                variant_of=self.variant if self.artifact_b is not None else None,
                window=TimeWindow.from_date(self.settings.earliest_event, self.settings.max_ahead_seconds))
        return rt

    def reload(self, partition: int) -> PartitionRuntime:
        """The partition rebuilt from the store (another worker, or a fault, may have moved it)."""
        self.runtimes.pop(partition, None)
        return self.runtime(partition)

    def refresh_thresholds(self) -> None:
        """Read the thresholds operators set in Redis and hand them to every partition."""
        cfg = self.store.config()
        self.thresholds = (cfg.get("threshold", self.settings.threshold),
                           cfg.get("fast_threshold", self.settings.fast_threshold))
        p = self.policy
        for rt in self.runtimes.values():
            rt.set_thresholds(p.threshold, p.fast_threshold)

    def predict(self, user_id: int, track_id: str) -> dict:
        """P(full) of a (user, track) now, from the state the user's partition keeps in Redis."""
        partition = partition_of(user_id, self.settings.partitions)
        users, _, tracks = self.store.fetch(partition, [user_id], [], [track_id])
        state = State(users=users, tracks=tracks)
        session = None
        now = time.time()
        user = users.get(user_id)
        if user is not None:
            now = user[U_TS]  # event time of the user's last event: live data and replays alike
            if user[U_SESSION]:
                key = (user_id, user[U_SESSION][-1])
                state.sessions.update(self.store.fetch(partition, [], [key], [])[1])
                session = state.sessions.get(key)
        engine = FeatureEngine(self.catalogue, self.engine_config, state)
        row = engine.features(user_id, track_id, session, now, int(now // 3600) % 24)
        variant = self.variant(user_id)
        artifact = self.variants[variant]
        p = float(artifact.predict_full(np.array([row]))[0])
        policy = self.policy
        return {"user_id": user_id, "track_id": track_id, "p_full": p, "decision": TIER_NAMES[policy.target(p)],
                "threshold": policy.threshold, "fast_threshold": policy.fast_threshold, "variant": variant,
                "model": artifact.model, "model_version": artifact.version,
                "known_user": user is not None, "known_track": track_id in tracks}


def tier_config_for(settings: Settings, catalogue: Catalogue) -> TierConfig:
    """Capacities for the whole cache, split evenly over the partitions (one shard each)."""
    base = TierConfig.for_catalogue(catalogue, settings.fast_capacity, settings.medium_capacity,
                                    settings.transfer_cost, settings.cold_after_hours)
    return base.split(settings.partitions)


def build_worker(settings: Settings, *, store=None, catalogue: Catalogue | None = None,
                 artifact: Artifact | None = None, artifact_b: Artifact | None = None,
                 sinks: tuple[Sink, Sink] | None = None, sensors: list[Sensor] | None = None) -> Worker:
    """The worker's parts: those passed in, the others built from ``settings``. ``sinks``: where
    (cache commands, dead letters) go; ``sensors``: told of every committed batch."""
    catalogue = load_catalogue(settings) if catalogue is None else catalogue
    engine_features = FeatureEngine(catalogue).feature_names
    if artifact is None:
        artifact = load(settings.model_path, feature_names=engine_features)
    else:
        artifact.check_features(engine_features)
    if artifact_b is None and settings.model_b_path:
        artifact_b = load(settings.model_b_path, feature_names=engine_features)
    store = build_store(settings) if store is None else store
    store.ping()
    worker = Worker(settings, store, catalogue, artifact, tier_config_for(settings, catalogue),
                    EngineConfig(**artifact.engine_config), artifact_b)
    commands, dead_letters = build_sinks(settings) if sinks is None else sinks
    worker.checkpoint = Checkpoint(commands, dead_letters, sensors or [], worker.models)
    worker.refresh_thresholds()
    return worker
