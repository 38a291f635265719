"""The composition root: the one place that turns Settings into the worker's parts.

``build_worker(settings)`` builds every part the settings name; each part can be passed in
instead (a store, the catalogue, the models, the sinks), so tests hand it fakes, the way
cosmicpython's ``bootstrap`` does. Nothing is built or connected when this module is imported;
the Kafka sinks connect on their first flush."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache, cached_property, lru_cache, partial

import numpy as np

from cache_warmer.experiment import AB, variant_of
from cache_warmer.policies import ThresholdPolicy
from cache_warmer.tiers import TIER_NAMES, TierConfig
from models.artifacts import Artifact, load
from models.events import Catalogue
from models.features import EngineConfig, FeatureEngine
from models.parsing import TimeWindow
from models.state import U_SESSION, U_TS, State

from stream.worker.checkpoint import Checkpoint, Sensor
from stream.kafka_io import partition_of, track_partition_of
from stream.worker.stages.entry_codec import OwnMessages
from stream.worker.stages.partition import PartitionRuntime
from stream.worker.stages.predict import PredictRuntime
from stream.worker.stages.warm import SourceEnds, WarmRuntime
from stream.settings import Settings
from stream.store import Mirror, PartitionStore, StateStore
from stream.sinks import KafkaSink, SharedProducer, Sink
from stream.stores import store_from_url

log = logging.getLogger(__name__)


def build_store(settings: Settings):
    """The state store named by SKIPCACHE_REDIS's scheme (see stream/stores)."""
    return store_from_url(settings.redis_url, settings.redis_prefix, int(settings.state_ttl_days * 86400),
                          partitions=settings.partitions, warm_partitions=settings.warm_partitions)


def build_sinks(settings: Settings) -> dict[str, dict[str, Sink]]:
    """Each stage's sinks (predict: entries, dead letters, and ``forward``, the repartition topic;
    warm: commands, dead letters), Kafka topics through one producer. A stage has its own sinks so one stage's flush never takes
    (and acknowledges) the other's records."""
    producer = SharedProducer(settings.kafka_bootstrap)
    return {"predict": {"entries": KafkaSink(settings.topic_entries, producer),
                        "dead_letters": KafkaSink(settings.topic_dead_letter, producer),
                        "forward": KafkaSink(settings.topic_repartition, producer)},
            "warm": {"commands": KafkaSink(settings.topic_commands, producer),
                     "dead_letters": KafkaSink(settings.topic_dead_letter, producer)}}


def load_catalogue(settings: Settings) -> Catalogue:
    if not settings.data_dir:
        log.warning("SKIPCACHE_DATA is not set: no catalogue (users, tracks, artists, storage)")
        return Catalogue()
    from stream.files import read_catalogue

    return read_catalogue(settings.data_dir).catalogue


@dataclass
class Stage:
    """One stage's partitions in this process: their runtimes, made on assignment, and the
    checkpoint that commits their batches."""

    name: str
    topic: str
    partitions: int
    checkpoint: Checkpoint
    make: Callable[[int], PartitionRuntime]
    store: PartitionStore | None = None
    """Where its partitions' state and offsets live (read for partitions other workers own)."""
    runtimes: dict[int, PartitionRuntime] = field(default_factory=dict)
    forward: Sink | None = None
    """Predict: where its partitions forward the events of users who live elsewhere (the
    repartition topic, which the stage also reads: ``forward.topic``)."""

    def runtime(self, partition: int) -> PartitionRuntime:
        rt = self.runtimes.get(partition)
        if rt is None:
            rt = self.runtimes[partition] = self.make(partition)
        return rt

    def reload(self, partition: int) -> PartitionRuntime:
        """The partition rebuilt from the store (another worker, or a fault, may have moved it)."""
        self.runtimes.pop(partition, None)
        return self.runtime(partition)


@dataclass
class Worker:
    settings: Settings
    store: StateStore
    catalogue: Catalogue
    artifact: Artifact
    tier_config: TierConfig
    engine_config: EngineConfig
    artifact_b: Artifact | None = None
    stages: dict[str, Stage] = field(default_factory=dict)
    """The stages this process runs (``SKIPCACHE_STAGE``), by name."""
    thresholds: tuple[float, float] | None = None
    """(medium, fast) in force: read from Redis by refresh_thresholds, not on every access."""
    source_ends: SourceEnds | None = None
    """Where the warm stage reads the sessions partitions' end offsets (set by the live worker)."""
    own_messages: OwnMessages | None = None
    """The entries messages the predict stage made, for the warm stage of the same process (both
    stages here), which takes them as made rather than parsing them again."""
    mirrors: dict[int, Mirror] = field(default_factory=dict)
    """The process's copy of each predict partition's track counts that it reads from another
    process's commits (``stream/store.py``), shared by its predict runtimes."""

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

    @cached_property
    def track_partition(self) -> Callable[[str], int]:
        """A track's warm partition, hashed once per track for every runtime of this process."""
        return cache(partial(track_partition_of, partitions=self.settings.warm_partitions))

    def predict_runtime(self, partition: int) -> PredictRuntime:
        s = self.settings
        scorers = {name: art.predict_full for name, art in self.variants.items()}
        return PredictRuntime(partition, self.store, self.catalogue, scorers, self.policy.scorer, self.engine_config,
                              s.warm_partitions, self.track_partition,
                              variant_of=self.variant if self.artifact_b is not None else None,
                              window=self.window, user_partition=self.user_partition, partitions=s.partitions,
                              own=self.own_messages, mirrors=self.mirrors)

    @cached_property
    def user_partition(self):
        """A user's sessions partition, as Kafka's default partitioner places a message keyed by
        the user id (the contract)."""
        return lru_cache(maxsize=1 << 18)(partial(partition_of, partitions=self.settings.partitions))

    @property
    def window(self) -> TimeWindow:
        """The event times both stages believe (SKIPCACHE_EARLIEST_EVENT, SKIPCACHE_MAX_AHEAD_SECONDS)."""
        return TimeWindow.from_date(self.settings.earliest_event, self.settings.max_ahead_seconds)

    def warm_runtime(self, partition: int) -> WarmRuntime:
        owner = self.track_partition
        return WarmRuntime(partition, self.store.stage("warm"), self.catalogue, self.policy, self.tier_config,
                           lambda track: owner(track) == partition, self.models, sources=self.settings.partitions,
                           window=self.window, source_ends=self.source_ends,
                           shadow_thresholds=self.settings.shadows, own=self.own_messages)

    def refresh_thresholds(self) -> None:
        """Read the thresholds operators set in Redis and hand them to every partition."""
        cfg = self.store.config()
        self.thresholds = (cfg.get("threshold", self.settings.threshold),
                           cfg.get("fast_threshold", self.settings.fast_threshold))
        p = self.policy
        warm = self.stages.get("warm")
        for rt in (warm.runtimes.values() if warm is not None else ()):
            rt.set_thresholds(p.threshold, p.fast_threshold)

    def predict(self, user_id: int, track_id: str) -> dict:
        """P(full) of a (user, track) now, from the state the user's partition keeps in Redis."""
        return self.predict_many([(user_id, track_id)])[0]

    def predict_many(self, requests: list[tuple[int, str]]) -> list[dict]:
        """``predict`` for many (user, track) pairs at once: one Redis round trip per partition
        for users and tracks (and one more for open sessions), one matrix product per variant."""
        parts = self.settings.partitions
        by_partition: dict[int, list[int]] = {}
        for i, (user, _) in enumerate(requests):
            by_partition.setdefault(partition_of(user, parts), []).append(i)
        rows: list = [None] * len(requests)
        known: list = [None] * len(requests)
        for partition, idx in by_partition.items():
            users = list({requests[i][0] for i in idx})
            tracks = list({requests[i][1] for i in idx})
            got_u, _, got_t = self.store.fetch(partition, users, [], tracks)
            open_sessions = [(u, rec[U_SESSION][-1]) for u, rec in got_u.items() if rec[U_SESSION]]
            got_s = self.store.fetch(partition, [], open_sessions, [])[1] if open_sessions else {}
            engine = FeatureEngine(self.catalogue, self.engine_config, State(users=got_u, sessions=got_s, tracks=got_t))
            gathered = []
            for i in idx:
                user_id, track_id = requests[i]
                user = got_u.get(user_id)
                session, now = None, time.time()
                if user is not None:
                    now = user[U_TS]  # event time of the user's last event: live data and replays alike
                    if user[U_SESSION]:
                        session = got_s.get((user_id, user[U_SESSION][-1]))
                gathered.append(engine.gather(user_id, track_id, session, now, int(now // 3600) % 24))
                known[i] = (user is not None, track_id in got_t)
            for i, row in zip(idx, engine.matrix(gathered)):  # the partition's rows derived at once
                rows[i] = row
        variants = [self.variant(u) for u, _ in requests]
        scores: list = [0.0] * len(requests)
        for variant in set(variants):
            at = [i for i, v in enumerate(variants) if v == variant]
            # rounded as the stream rounds its scores: BLAS may give a row a different last bit
            # depending on the batch's shape, and an answer must not depend on who asked with it
            for i, p in zip(at, np.round(self.variants[variant].predict_full(np.array([rows[i] for i in at])), 9).tolist()):
                scores[i] = p
        policy = self.policy
        out = []
        for (user_id, track_id), p, variant, (known_user, known_track) in zip(requests, scores, variants, known):
            artifact = self.variants[variant]
            out.append({"user_id": user_id, "track_id": track_id, "p_full": float(p),
                        "decision": TIER_NAMES[policy.target(p)], "threshold": policy.threshold,
                        "fast_threshold": policy.fast_threshold, "variant": variant, "model": artifact.model,
                        "model_version": artifact.version, "known_user": known_user, "known_track": known_track})
        return out


def tier_config_for(settings: Settings, catalogue: Catalogue) -> TierConfig:
    """Capacities for the whole cache, split evenly over the warm partitions (one track shard each)."""
    base = TierConfig.for_catalogue(catalogue, settings.fast_capacity, settings.medium_capacity,
                                    settings.transfer_cost, settings.cold_after_hours)
    return base.split(settings.warm_partitions)


def build_worker(settings: Settings, *, store=None, catalogue: Catalogue | None = None,
                 artifact: Artifact | None = None, artifact_b: Artifact | None = None,
                 sinks: dict[str, dict[str, Sink]] | None = None, sensors: list[Sensor] | None = None) -> Worker:
    """The worker's parts: those passed in, the others built from ``settings``. ``sinks``: each
    stage's sinks by name (see ``build_sinks``); ``sensors``: told of every committed batch."""
    settings.shadows  # a bad SKIPCACHE_SHADOW_THRESHOLDS is a clear error here, not a stopped partition
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
    if hasattr(store, "check_layout"):
        store.check_layout()
    engine_config = EngineConfig(**artifact.engine_config)
    if artifact_b is not None and EngineConfig(**artifact_b.engine_config) != engine_config:
        raise ValueError(
            "models A and B were trained with different feature settings (user half-life "
            f"{engine_config.user_half_life_days} vs {artifact_b.engine_config.get('user_half_life_days')} days): "
            "one engine computes both variants' features, so train them on the same window of the same data")
    if settings.session_gap_seconds > 0:
        engine_config = replace(engine_config, session_gap_seconds=settings.session_gap_seconds)
    worker = Worker(settings, store, catalogue, artifact, tier_config_for(settings, catalogue), engine_config, artifact_b)
    sinks = build_sinks(settings) if sinks is None else sinks
    topics = {"predict": (settings.topic_sessions, settings.partitions, worker.predict_runtime, store),
              "warm": (settings.topic_entries, settings.warm_partitions, worker.warm_runtime, store.stage("warm"))}
    for name in settings.stages:
        topic, partitions, make, stage_store = topics[name]
        stage_sinks = dict(sinks[name])
        forward = stage_sinks.pop("forward", None)  # flushed as runs arrive, not by the checkpoint
        worker.stages[name] = Stage(name, topic, partitions, Checkpoint(stage_sinks, sensors or []), make, stage_store,
                                    forward=forward)
    if "predict" in worker.stages and "warm" in worker.stages:  # its predict stage's messages, for its warm stage
        worker.own_messages = OwnMessages(owned=worker.stages["warm"].runtimes.__contains__)
    worker.refresh_thresholds()
    return worker
