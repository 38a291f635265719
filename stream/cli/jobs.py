"""The jobs skipcache does, as functions with typed arguments that return results.

Entry points are thin: the command line (``stream/cli/main.py``) parses arguments, calls one of these
and renders the result with ``stream/cli/reports.py``; ``skipcache up`` (``stream/cli/embedded.py``) and
the tests call them directly. Nothing here prints."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from cache_warmer.policies import ThresholdPolicy
from cache_warmer.predictor import PredictionLedger
from cache_warmer.simulation import Objective, simulate, sweep
from cache_warmer.tiers import TierConfig, TierState
from cache_warmer.warmer import CacheWarmer, load_warmer_state, policy_figures
from models.artifacts import Artifact, load, save
from models.estimators import MODEL_NAMES
from models.evaluation import build_table, choose_half_life, evaluate, kept_rows, train_artifact
from models.columns import PLAY_CODE, EventColumns, replay_columns
from models.events import Catalogue, Event

from stream.export_summary import summarize_export
from stream.files import Dataset, DataError, read_dataset
from stream.kafka_io import partition_of, track_partition_of
from stream.worker.stages.entry_codec import stream_of
from stream.worker.stages.held import HeldQueues
from stream.worker import advice
from stream.settings import Settings


def load_replay(data: str | Path, progress: bool = True, timings: dict | None = None) -> tuple[Dataset, EventColumns]:
    """Read an export and put its events in replay order (``models.columns.replay_columns``,
    the columnar ``models.replay``). The events move to the replay: the dataset keeps none, so
    an export is held once. ``timings`` gets the seconds of each phase."""
    started = time.perf_counter()
    ds = read_dataset(data, progress=progress)
    if not len(ds.columns):
        raise DataError(f"{data} holds no readable events ({ds.rejections.total} lines rejected)")
    read = time.perf_counter()
    columns, ds.columns = ds.columns, EventColumns.empty(ds.columns.tracks)
    events = replay_columns(columns)
    del columns
    if timings is not None:
        timings.update(read_s=round(read - started, 2), replay_order_s=round(time.perf_counter() - read, 2))
    return ds, events


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def inspect_export(data: str | Path) -> dict:
    started = time.perf_counter()
    ds = read_dataset(data)
    seconds = time.perf_counter() - started
    summary = summarize_export(ds)
    peak, events = peak_rss_bytes(), len(ds.columns)
    summary["reading"] = {"seconds": round(seconds, 3),
                          "lines_per_second": round(ds.lines.get("sessions", 0) / seconds) if seconds else None,
                          "events_per_second": round(events / seconds) if seconds else None,
                          "peak_rss_bytes": peak, "peak_bytes_per_event": round(peak / events, 1) if events else None,
                          "event_column_bytes": ds.columns.nbytes}
    return summary


def generate_export(out: str | Path, users: int = 1000, seed: int = 0, profile: str = "long", noise: float = 0.0,
                    tracks: int | None = None, events: int | None = None) -> dict:
    from stream.synthetic import generate, users_for_events

    if events is not None:
        users = users_for_events(events, profile)
    started = time.perf_counter()
    counts = generate(out, users=users, seed=seed, profile=profile, noise=noise, tracks=tracks)
    return {**counts, "out": str(out), "seconds": time.perf_counter() - started}


def train_model(data: str | Path, out: str | Path, model: str = "linear_svc", train_fraction: float = 1.0,
                seed: int = 0) -> Artifact:
    """Fit on the earliest ``train_fraction`` of the plays and save the artifact to ``out``."""
    ds, events = load_replay(data)
    config, scores = choose_half_life(events, ds.catalogue, train_fraction, seed=seed)
    table = build_table(events, ds.catalogue, config, consume=True)
    del events
    artifact = train_artifact(table, model, train_fraction, ds.fingerprint, config, seed)
    artifact.metrics["half_life_validation_auc"] = scores
    save(artifact, out)
    return artifact


def evaluate_models(data: str | Path, models: list[str], train_fraction: float = 0.7, seed: int = 0) -> dict:
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}: choose from {', '.join(MODEL_NAMES)}")
    started = time.perf_counter()
    timings: dict = {}
    ds, events = load_replay(data, timings=timings)
    peaks = {"read": peak_rss_bytes()}  # the peak so far after each phase: which one sets it
    choosing = time.perf_counter()
    config, scores = choose_half_life(events, ds.catalogue, train_fraction, seed=seed)
    timings["half_life_choice_s"] = round(time.perf_counter() - choosing, 2)
    peaks["half_life_choice"] = peak_rss_bytes()
    result = {"events": len(events), "user_half_life_days": config.user_half_life_days,
              "half_life_validation_auc": scores}
    features = time.perf_counter()
    # the table is all the models need: the events' memory goes as the replay passes it, and
    # only the rows some model reads are stored (the same figures as the whole table)
    keep = kept_rows(events.ts[events.kind == PLAY_CODE], models, train_fraction, seed)
    table = build_table(events, ds.catalogue, config, consume=True, keep=keep)
    del events
    timings["features_s"] = round(time.perf_counter() - features, 2)
    timings["table_bytes"] = int(table.X.nbytes)
    peaks["features"] = peak_rss_bytes()
    result.update(evaluate(table, models, train_fraction, seed))
    timings.update({f"fit_{m}_s": fig["fit_seconds"] for m, fig in result["models"].items()})
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    result["timings"] = timings
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["peak_rss_bytes_after"] = {**peaks, "fits": result["peak_rss_bytes"]}
    return result


@dataclass(frozen=True)
class CacheOptions:
    """The cache the simulation and the sweep replay into (defaults: the worker's settings)."""

    fast_capacity: int = 0
    medium_capacity: int = 0
    transfer_cost: float = 0.0005
    cold_after_hours: float = 1.0
    fast_threshold: float = 0.95
    hit_value: float = 0.002
    count: str = "after-training"  # or "all"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> "CacheOptions":
        return cls(settings.fast_capacity, settings.medium_capacity, settings.transfer_cost,
                   settings.cold_after_hours, settings.fast_threshold, **{"hit_value": settings.hit_value, **overrides})

    def tiers(self, catalogue: Catalogue, events: "EventColumns | list[Event]") -> TierConfig:
        return TierConfig.for_catalogue(catalogue, self.fast_capacity, self.medium_capacity, self.transfer_cost,
                                        self.cold_after_hours, n_tracks=EventColumns.of(events).distinct_tracks())

    @property
    def count_from(self) -> float | None:
        """-inf counts every event; None lets the simulation count after the training window."""
        return -math.inf if self.count == "all" else None


def sharded_as_worker(partitions: int, warm_partitions: int | None = None) -> dict:
    """``simulate``'s shards as the worker's partitions: users and tracks placed by Kafka's
    default partitioner (murmur2 of the key), ``warm_partitions`` default as many."""
    m = max(1, warm_partitions or partitions)
    return {"partitions": partitions, "warm_partitions": m,
            "user_partition": lambda user_id: partition_of(user_id, partitions),
            "track_partition": lambda track: track_partition_of(track, m)}


def simulate_policies(data: str | Path, models: list[str | Path], cache: CacheOptions, threshold: float = 0.5,
                      partitions: int = 1, batch_size: int = 20_000, ab_share: float | None = None,
                      audit_storage: bool = False, session_gap: float | None = None,
                      warm_partitions: int | None = None) -> dict:
    """``partitions``: the sessions topic's (predict shards by user); ``warm_partitions``: the
    entries topic's (warm shards by track; default as many), as the worker's settings."""
    artifacts = [load(m) for m in models]
    timings: dict = {}
    ds, events = load_replay(data, timings=timings)
    result = simulate(events, ds.catalogue, artifacts, cache.tiers(ds.catalogue, events), threshold=threshold,
                      fast_threshold=cache.fast_threshold, count_from=cache.count_from,
                      objective=Objective(cache.hit_value), batch_size=batch_size, ab_share=ab_share,
                      audit_storage=audit_storage, session_gap=session_gap,
                      **sharded_as_worker(max(1, partitions), warm_partitions))
    result["rejected"] = ds.rejections.as_dict()
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["timings"] = {**timings, "replay_loop_s": round(result["seconds"], 2)}
    return result


def simulate_as_worker(events, catalogue: Catalogue, artifact: Artifact, settings: Settings,
                       partitions: int | None = None, end_sessions: bool = True,
                       policies: list[ThresholdPolicy] | None = None) -> dict:
    """What ``skipcache simulate`` says of ``events`` with the worker's settings: its model,
    thresholds, cache and partitions (``partitions``: both stages', default the settings' sessions
    and warm partitions), every event counted; the figures the worker must give (the
    integration tests, the benchmark). ``end_sessions=False``: the plays open at the end stay
    open, as live. ``policies``: these instead of the live one, their figures by name."""
    tiers = TierConfig.for_catalogue(catalogue, settings.fast_capacity, settings.medium_capacity,
                                     settings.transfer_cost, settings.cold_after_hours)
    live = ThresholdPolicy("model", "model", settings.threshold, settings.fast_threshold)
    result = simulate(events, catalogue, [artifact], tiers, policies or [live], count_from=-math.inf,
                      progress=False, end_sessions=end_sessions,
                      **sharded_as_worker(partitions or settings.partitions,
                                          partitions or settings.warm_partitions))["policies"]
    return result if policies else result["model"]


def sweep_thresholds(data: str | Path, model: str | Path, thresholds: list[float], cache: CacheOptions) -> dict:
    artifact = load(model)
    ds, events = load_replay(data)
    return sweep(events, ds.catalogue, artifact, thresholds, cache.tiers(ds.catalogue, events),
                 fast_threshold=cache.fast_threshold, objective=Objective(cache.hit_value),
                 count_from=cache.count_from)


def live_figures(settings: Settings, store=None, catalogue: Catalogue | None = None) -> dict:
    """The live worker's figures, read back from Redis (pass ``store`` and ``catalogue`` when
    polling, so they are not rebuilt on every call): cache figures from every warm partition,
    accuracy from every predict partition."""
    from stream.bootstrap import build_store, load_catalogue, tier_config_for

    store = store or build_store(settings)
    catalogue = catalogue if catalogue is not None else load_catalogue(settings)
    policy = ThresholdPolicy("model", "model")
    tiers = tier_config_for(settings, catalogue)
    warm_store = store.stage("warm")
    warmers = []
    shadows: dict[str, list[CacheWarmer]] = {}  # threshold label -> its warmer in each warm partition
    received: dict[int, dict[str, int]] = {}  # warm partition -> source partition -> offset taken in
    queued = 0  # entries taken in, waiting for the watermark
    late = 0  # entries applied behind event time already applied
    for q in range(settings.warm_partitions):
        w = CacheWarmer(policy, TierState(tiers, Catalogue()))
        blob = warm_store.blob(q)
        if blob:
            state = orjson.loads(blob)
            load_warmer_state(w, state)
            received[q] = state["received"]
            queued += sum(len(entries) for entries in state.get("queues", {}).values())  # the older layout
            queued += sum(map(len, HeldQueues().load(warm_store, q, state, "queued").values()))
            late += state.get("late", 0)
            for name, shadow_state in state.get("shadows", {}).items():
                t = float(name)
                sw = CacheWarmer(ThresholdPolicy(f"shadow:{name}", "model", t, t), TierState(tiers, Catalogue()))
                load_warmer_state(sw, shadow_state)
                shadows.setdefault(name, []).append(sw)
        warmers.append(w)
    accuracy = []
    behind = 0
    held = 0  # events forwarded to a predict partition, waiting for their time there
    for p in range(settings.partitions):
        blob = store.blob(p)
        if blob:
            state = orjson.loads(blob)
            accuracy += PredictionLedger.from_state(state["ledger"]).figures.values()
            behind += sum(1 for q, seq in state["sent"].items() if received.get(int(q), {}).get(str(p), -1) < seq)
            for key, seq in state.get("sent_forwarded", {}).items():  # entries of events forwarded to p
                q, origin = map(int, key.split(":"))
                behind += received.get(q, {}).get(str(stream_of(p, origin, settings.partitions)), -1) < seq
            held += sum(map(len, HeldQueues().load(store, p, state, "forwarded").values()))
    fig = policy_figures(warmers, accuracy)
    contract, rejected = store.counters("contract"), store.counters("rejected")
    # forwarded by one predict partition, not yet taken in by the other (still on the topic)
    in_flight = int(contract.get("misrouted:wrong_partition", 0) - contract.get("repartitioned", 0) - sum(
        n for reason, n in rejected.items() if reason.startswith("forwarded_"))) - held
    # every event forwarded between predict partitions applied, every entry of every committed
    # predict batch applied
    fig["warm_caught_up"] = behind == 0 and queued == 0 and held == 0 and in_flight <= 0
    fig["forwarded_waiting"] = held + max(0, in_flight)
    fig["warm_queued_entries"] = queued
    fig["warm_late_entries"] = late
    fig["offsets"] = {"predict": {p: store.offset(p) for p in range(settings.partitions)},
                      "warm": {q: warm_store.offset(q) for q in range(settings.warm_partitions)}}
    fig["events_by_type"] = store.counters("events")
    fig["rejected"] = rejected
    fig["contract"] = contract  # plays_without_upcoming, misrouted:<reason>, repartitioned
    hit_value = settings.hit_value
    fig["net_value"] = _net_value(fig, hit_value)
    fig["shadows"] = {}
    for name, ws in sorted(shadows.items(), key=lambda kv: float(kv[0])):
        shadow = policy_figures(ws)
        shadow.pop("fast_threshold", None)  # each partition's follows the live one: not in the state
        shadow["net_value"] = _net_value(shadow, hit_value)
        fig["shadows"][name] = shadow
    return fig


def _net_value(fig: dict, hit_value: float) -> float:
    """Hit value of full-play hits - transfer cost - storage cost accrued (``advice.py``)."""
    storage = fig["storage_cost_per_day"] * fig["window_days"] if fig["window_days"] > 0 else 0.0
    return hit_value * fig["full_play_hits"] - fig["transfer_cost"] - storage


def threshold_advice(settings: Settings, window_hours: int = 24) -> dict:
    from stream.bootstrap import build_store

    return advice.threshold_advice(settings, build_store(settings), window_hours)


def thresholds(settings: Settings, threshold: float | None = None, fast_threshold: float | None = None) -> dict:
    """The thresholds every worker uses; with values, set them first (validated as over HTTP)."""
    from stream.worker.web import check_thresholds
    from stream.bootstrap import build_store

    store = build_store(settings)
    current = {"threshold": settings.threshold, "fast_threshold": settings.fast_threshold, **store.config()}
    wanted = {k: v for k, v in (("threshold", threshold), ("fast_threshold", fast_threshold)) if v is not None}
    if wanted:
        store.set_config(**check_thresholds(wanted, current))
        current.update(store.config())
    out = {"threshold": current["threshold"], "fast_threshold": current["fast_threshold"], "set": bool(wanted)}
    if wanted.get("threshold") is not None:  # what the shadow at the new value has shown, if one runs there
        from cache_warmer.shadows import label

        fig = live_figures(settings, store, Catalogue())
        out["shadow"] = fig["shadows"].get(label(wanted["threshold"]))
        out["live_before"] = {k: fig.get(k) for k in ("full_play_hit_ratio", "promotions", "wasted_promotions",
                                                        "promotion_precision", "net_value")}
        out["shadows_running"] = list(fig["shadows"])
    return out


def ab_report(settings: Settings) -> dict:
    from stream.worker.web import ab_results
    from stream.bootstrap import build_store

    return ab_results(build_store(settings))
