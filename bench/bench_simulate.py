"""Simulation throughput on ~3M events with the model policy, and where the time goes.

Target (issue 3): >= 50,000 events/s in one process.
Run: python bench/bench_simulate.py"""
from __future__ import annotations

import time

from _common import bench_data


def main() -> None:
    from cache_warmer.policies import StaticPolicy, ThresholdPolicy, standard_policies
    from cache_warmer.simulation import simulate
    from models.evaluation import build_table, train_artifact
    from models.features import EngineConfig, FeatureEngine
    from models.columns import replay_columns
    from models.gc_pause import paused_gc
    from stream.files import read_dataset

    data = bench_data()
    ds = read_dataset(data, progress=False)
    started = time.perf_counter()
    events = replay_columns(ds.columns)
    order_s = time.perf_counter() - started
    n = len(events)
    print(f"{n:,} events in replay order ({order_s:.1f} s to order)")

    table = build_table(events, ds.catalogue, progress=False)
    art = train_artifact(table, "linear_svc", 0.7, ds.fingerprint, EngineConfig())
    del table

    with paused_gc():
        started = time.perf_counter()
        for e in events:
            pass
        loop_s = time.perf_counter() - started
        engine = FeatureEngine(ds.catalogue)
        started = time.perf_counter()
        for e in events:
            engine.observe(e)
        engine_s = time.perf_counter() - started
    print(f"raw baseline, a Python loop over the events:        {n / loop_s:>12,.0f} events/s")
    print(f"feature engine alone (observe, 2 feature rows/play): {n / engine_s:>12,.0f} events/s")

    for label, policies in (("static + model", [StaticPolicy("static"), ThresholdPolicy("model", "model")]),
                            ("all six policies", standard_policies(["model"]))):
        for batch in (20_000, 1_000):
            started = time.perf_counter()
            result = simulate(events, ds.catalogue, [art], policies=list(policies), batch_size=batch, progress=False)
            s = time.perf_counter() - started
            print(f"simulate, {label:<17} batch {batch:>6,}:   {n / s:>12,.0f} events/s  ({s:.1f} s; "
                  f"model accuracy {result['policies']['model']['accuracy']:.3f}, "
                  f"majority {result['policies']['model']['majority_accuracy']:.3f})")


if __name__ == "__main__":
    main()
