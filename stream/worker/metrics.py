"""The worker's Prometheus metrics: a `skipcache_` prefix, base units (seconds), `_total`
counters, no user or track labels. Accuracy comes from the predict stage, cache figures from the
warm stage (the storage's placement); lag, batch time and latency are labelled by stage. Predictions are counted by model, variant and outcome
(tp|fp|tn|fn), so accuracy, precision and recall are PromQL over counters; a rolling-window
accuracy gauge per model and variant shows the last N predictions directly."""
from __future__ import annotations

import threading
import time
from collections import Counter as Tally, deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, GCCollector, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import HistogramMetricFamily

ROLLING_WINDOW = 1000


class BatchHistogram:
    """A labelled histogram observed a batch at a time: prometheus_client's ``observe`` takes a
    lock and walks the buckets per value, and a batch of thousands of records' latencies cost
    the event loop ~2% of the worker's time that way. Exposed as a Prometheus histogram like any
    other (``_bucket``, ``_count``, ``_sum``)."""

    def __init__(self, name: str, documentation: str, label: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry):
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = np.asarray(buckets, dtype=float)
        self._series: dict[str, list] = {}  # label value -> [counts per bucket (+Inf last), sum]
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: str, amounts) -> None:
        """Every amount in ``amounts`` (seconds) under label ``value``."""
        a = np.asarray(amounts, dtype=float)
        counts = np.bincount(np.searchsorted(self.bounds, a, side="left"), minlength=len(self.bounds) + 1)
        with self._lock:
            series = self._series.get(value)
            if series is None:
                series = self._series[value] = [np.zeros(len(self.bounds) + 1, dtype=np.int64), 0.0]
            series[0] += counts
            series[1] += float(a.sum())

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            for value, (counts, total) in self._series.items():
                cumulative = np.cumsum(counts)
                family.add_metric([value], [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cumulative)]
                                  + [("+Inf", int(cumulative[-1]))], total)
        yield family


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, window: int = ROLLING_WINDOW):
        r = self.registry = registry or CollectorRegistry()
        # the process's CPU, memory and collector (python_gc_collections_total by generation):
        # the worker's cost per event moved with its collector's settings (tune_process)
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        self.predictions = Counter("skipcache_predictions", "Resolved predictions by outcome of the 'played in full' class",
                                   ["model", "variant", "outcome"], registry=r)
        self.rolling_accuracy = Gauge("skipcache_rolling_accuracy", f"Accuracy of the last {window} resolved predictions",
                                      ["model", "variant"], registry=r)
        self.plays = Counter("skipcache_plays", "Plays seen by the cache", registry=r)
        self.full_plays = Counter("skipcache_full_plays", "Plays resolved as played in full", registry=r)
        self.full_play_hits = Counter("skipcache_full_play_hits", "Full plays whose track was in fast or medium", registry=r)
        self.hits = Counter("skipcache_cache_hits", "Plays whose track was in a warm tier", ["tier"], registry=r)
        self.misses = Counter("skipcache_cache_misses", "Plays whose track was in slow storage", registry=r)
        self.promotions = Counter("skipcache_promotions", "Tracks moved up", ["tier"], registry=r)
        self.evictions = Counter("skipcache_evictions", "Tracks moved down to make room", registry=r)
        self.demotions = Counter("skipcache_demotions", "Tracks demoted after going cold", registry=r)
        self.wasted = Counter("skipcache_wasted_promotions", "Promotions whose first play was skipped or that were evicted unused", registry=r)
        self.useful = Counter("skipcache_useful_promotions", "Promotions whose first play was played in full", registry=r)
        self.cost = Gauge("skipcache_storage_cost_per_day", "Storage cost per day of the partitions this worker owns", registry=r)
        self.threshold = Gauge("skipcache_threshold", "Promotion threshold on P(played in full)", ["tier"], registry=r)
        self.events = Counter("skipcache_events", "Events applied, by type", ["type"], registry=r)
        self.rejected = Counter("skipcache_rejected_events", "Records rejected (dead-lettered) and orphan skips, by the "
                                "reason `skipcache status` names (entries_* for the entries topic)", ["reason"], registry=r)
        self.plays_without_upcoming = Counter(
            "skipcache_plays_without_upcoming", "Plays sent with no next_track_id: only the playing track was scored "
            "(README: Producing session events)", registry=r)
        self.misrouted = Counter("skipcache_misrouted_events", "Events that arrived on a sessions partition other than "
                                 "their user's (the producer keys them otherwise than by user id)", ["reason"], registry=r)
        self.misrouted.labels("wrong_partition")
        self.repaired = Counter("skipcache_repaired_events", "Events taken though they came out of order, by how "
                                "(skip_before_play: a skip held until its late play came)", ["how"], registry=r)
        self.repaired.labels("skip_before_play")
        self.value = Counter("skipcache_value", "The live placement's net value by term, in the storage cost's unit: "
                             "hits (hit value x full-play hits), transfer (promotions), storage (cost accrued in event "
                             "time); net = hits - transfer - storage", ["term"], registry=r)
        shadow = ["threshold"]
        self.shadow_value = Counter("skipcache_shadow_value", "A shadow placement's net value by term (as "
                                    "skipcache_value): what the threshold would have earned", shadow + ["term"], registry=r)
        self.shadow_plays = Counter("skipcache_shadow_plays", "Plays a shadow placement counted", shadow, registry=r)
        self.shadow_full_plays = Counter("skipcache_shadow_full_plays", "Full plays a shadow placement counted", shadow,
                                         registry=r)
        self.shadow_full_play_hits = Counter("skipcache_shadow_full_play_hits", "Full plays whose track a shadow "
                                             "placement held in fast or medium", shadow, registry=r)
        self.shadow_hits = Counter("skipcache_shadow_cache_hits", "Plays whose track a shadow placement held warm",
                                   shadow + ["tier"], registry=r)
        self.shadow_promotions = Counter("skipcache_shadow_promotions", "Promotions a shadow placement made (none "
                                         "commanded)", shadow, registry=r)
        self.shadow_wasted = Counter("skipcache_shadow_wasted_promotions", "A shadow's promotions skipped at their "
                                     "first play or evicted unused", shadow, registry=r)
        self.shadow_useful = Counter("skipcache_shadow_useful_promotions", "A shadow's promotions played in full at "
                                     "their first play", shadow, registry=r)
        self.hit_value, self.transfer_cost = 0.002, 0.0
        self.contract_totals: dict[str, int] = {}
        """This process's plays_without_upcoming and misrouted:<reason>, for /healthz."""
        self.batch_seconds = Histogram("skipcache_batch_processing_seconds", "Time to process and commit one partition batch",
                                       ["stage"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                           2.5, 5), registry=r)
        self.event_latency = BatchHistogram("skipcache_event_latency_seconds", "From a record's Kafka timestamp to "
                                            "its stage committing it (predict: the session event; warm: the entries "
                                            "message)", "stage",
                                            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), r)
        self.duplicate_entries = Counter("skipcache_duplicate_entries", "Entries the warm stage dropped as already "
                                         "applied (re-sent by a predict batch replayed after a crash)", registry=r)
        self.late_entries = Counter("skipcache_late_entries", "Entries the warm stage applied behind event time "
                                    "it had already applied (their source was taken for idle)", registry=r)
        self.lag = Gauge("skipcache_consumer_lag", "Records behind the fetch high-watermark", ["stage", "partition"],
                         registry=r)
        self.model_info = Gauge("skipcache_model_info", "The model each variant serves (value 1)",
                                ["variant", "model", "version", "trained_at"], registry=r)
        self.dependency_up = Gauge("skipcache_dependency_up", "1 while the dependency answers, 0 while it is away",
                                   ["dependency"], registry=r)
        self.dependency_errors = Counter("skipcache_dependency_errors", "Failed calls to a dependency (each retried)",
                                         ["dependency"], registry=r)
        self.ready = Gauge("skipcache_ready", "1 when /readyz says ready (dependencies up, no stalled partition)",
                           registry=r)
        self.stalled = Gauge("skipcache_partition_stalled", "1 while a partition has lag and has not advanced",
                             ["stage", "partition"], registry=r)
        self.unowned = Gauge("skipcache_partition_unowned", "1 while a partition this worker does not own has lag and "
                             "nobody moves its offset in Redis", ["stage", "partition"], registry=r)
        self.stopped_partitions = Gauge("skipcache_partition_stopped", "1 while a partition is stopped: its records fail "
                                        "whatever is done with them, or its state cannot be loaded (see /livez)",
                                        ["stage", "partition"], registry=r)
        self.state_losses = Counter("skipcache_state_losses", "Partitions found with their Redis state lost or "
                                    "rolled back (rebuilt or replayed)", registry=r)
        self.relocations = Counter("skipcache_relocations", "Partitions re-read from Redis and re-positioned "
                                   "(fence, Redis outage, state loss)", registry=r)
        for dep in ("redis", "kafka"):
            self.dependency_up.labels(dep)
            self.dependency_errors.labels(dep)
        self._window: dict[tuple[str, str], deque] = {}
        self._window_size = window

    def set_models(self, variants: dict) -> None:
        for variant, art in variants.items():
            self.model_info.labels(variant, art.model, art.version,
                                   time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(art.created_at))).set(1)
            for outcome in ("tp", "fp", "tn", "fn"):
                self.predictions.labels(art.model, variant, outcome)  # export zeros from the start
        for tier in ("fast", "medium"):
            self.hits.labels(tier)
            self.promotions.labels(tier)

    def set_objective(self, hit_value: float, transfer_cost: float, shadows=()) -> None:
        """What a full-play hit earns and a promotion costs; the shadows' thresholds (their series
        exported from the start)."""
        from cache_warmer.shadows import label

        self.hit_value, self.transfer_cost = hit_value, transfer_cost
        for term in ("hits", "transfer", "storage"):
            self.value.labels(term)
        for t in shadows:
            for term in ("hits", "transfer", "storage"):
                self.shadow_value.labels(label(t), term)
            for m in (self.shadow_plays, self.shadow_full_plays, self.shadow_full_play_hits, self.shadow_promotions,
                      self.shadow_wasted, self.shadow_useful):
                m.labels(label(t))
            for tier in ("fast", "medium"):
                self.shadow_hits.labels(label(t), tier)

    def sensor(self, models: dict[str, str]):
        """The checkpoint's sensor: ``models`` maps each variant to the model it serves."""

        def committed(out, seconds: float) -> None:
            self.record_batch(out, models)
            self.batch_seconds.labels(out.stage).observe(seconds)
            if out.timestamps:
                self.event_latency.observe(out.stage, np.maximum(0.0, time.time() - np.asarray(out.timestamps)))

        return committed

    def record_batch(self, out, models: dict[str, str]) -> None:
        """Counters from one committed batch: accuracy from the predict stage (what the model
        got right), cache figures from the warm stage (what the storage held)."""
        for kind, n in out.kinds.items():
            self.events.labels(kind).inc(n)
        rejected = out.changes.counters.get("rejected") if out.changes is not None else None
        for reason, n in (rejected or {}).items():  # the names `skipcache status` gives (orphan skips too)
            self.rejected.labels(reason).inc(n)
        contract = out.changes.counters.get("contract") if out.changes is not None else None
        for name, n in (contract or {}).items():
            self.contract_totals[name] = self.contract_totals.get(name, 0) + int(n)
            if name == "plays_without_upcoming":
                self.plays_without_upcoming.inc(n)
            elif name.startswith("misrouted:"):
                self.misrouted.labels(name.split(":", 1)[1]).inc(n)
            else:
                self.repaired.labels(name).inc(n)
        if out.outcomes:  # counted once per (variant, outcome) a batch, not once per prediction
            for (variant, cell), n in Tally((o.variant, o.cell) for o in out.outcomes).items():
                self.predictions.labels(models.get(variant, variant), variant, cell).inc(n)
            for variant in {o.variant for o in out.outcomes}:
                model = models.get(variant, variant)
                win = self._window.get((model, variant))
                if win is None:
                    win = self._window[(model, variant)] = deque(maxlen=self._window_size)
                win.extend(o.correct for o in out.outcomes if o.variant == variant)
                self.rolling_accuracy.labels(model, variant).set(sum(win) / len(win))
        effects = out.effects
        if effects is None:
            return
        if out.skipped_duplicates:
            self.duplicate_entries.inc(out.skipped_duplicates)
        if out.late_entries:
            self.late_entries.inc(out.late_entries)
        f = effects.figures
        self.plays.inc(f.plays)
        self.full_plays.inc(f.full_plays)
        self.full_play_hits.inc(f.full_play_hits)
        self.hits.labels("fast").inc(f.hits_fast)
        self.hits.labels("medium").inc(f.hits_medium)
        self.misses.inc(f.plays - f.hits_fast - f.hits_medium)
        self.promotions.labels("fast").inc(f.promotions_fast)
        self.promotions.labels("medium").inc(f.promotions - f.promotions_fast)
        self.evictions.inc(f.evictions)
        self.demotions.inc(f.demotions)
        self.wasted.inc(f.wasted_promotions)
        self.useful.inc(f.useful_promotions)
        self.value.labels("hits").inc(self.hit_value * f.full_play_hits)
        self.value.labels("transfer").inc(self.transfer_cost * f.promotions)
        self.value.labels("storage").inc(max(0.0, out.storage_cost))
        if out.shadows:
            self.record_shadows(out.shadows)

    def record_shadows(self, shadows: dict) -> None:
        from cache_warmer.shadows import label

        for t, (effects, storage) in shadows.items():
            f, name = effects.figures, label(t)
            self.shadow_plays.labels(name).inc(f.plays)
            self.shadow_full_plays.labels(name).inc(f.full_plays)
            self.shadow_full_play_hits.labels(name).inc(f.full_play_hits)
            self.shadow_hits.labels(name, "fast").inc(f.hits_fast)
            self.shadow_hits.labels(name, "medium").inc(f.hits_medium)
            self.shadow_promotions.labels(name).inc(f.promotions)
            self.shadow_wasted.labels(name).inc(f.wasted_promotions)
            self.shadow_useful.labels(name).inc(f.useful_promotions)
            self.shadow_value.labels(name, "hits").inc(self.hit_value * f.full_play_hits)
            self.shadow_value.labels(name, "transfer").inc(self.transfer_cost * f.promotions)
            self.shadow_value.labels(name, "storage").inc(max(0.0, storage))

    def render(self) -> bytes:
        return generate_latest(self.registry)
