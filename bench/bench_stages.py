"""The worker's two stages without the broker: what they cost per event beyond the domain work.

Every event goes through the predict stage's and the warm stage's own checkpoints
(``stream/worker/in_memory.py``: decode, features, scores, entries encoded and decoded, the warm
stage, the commit) with the state in a real Redis-protocol server, in this one thread; the
baseline, measured in the same run on the same events, is ``skipcache simulate`` with the
worker's settings: the feature engine, the predictor and the warmer alone. CPU time only inside
the two checkpoints is counted, so the figure is steadier than ``bench_worker.py``'s (no broker,
no faust, no threads to share a core with): use it to measure a change to the stages' own code,
and ``bench_worker.py`` for the worker as a whole.

A first run in the process warms up and is not reported (see ``main``).

Run: python bench/bench_stages.py [--users 800] [--partitions 2] [--batch 2800] [--runs 2] [--profile [--profile-out F]]
(the profile covers the two checkpoints alone, as the CPU figure does)"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import time

from _common import trained_replay


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=800)
    ap.add_argument("--partitions", type=int, default=2, help="of both stages")
    ap.add_argument("--batch", type=int, default=2800, help="events per partition per checkpoint")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="cProfile one more run: the functions by their own time")
    ap.add_argument("--profile-out", help="with --profile: also save the profile here (pstats format)")
    args = ap.parse_args()
    from models.artifacts import load
    from models.events import Catalogue
    from stream.bootstrap import build_store, build_worker
    from stream.cli.jobs import live_figures, simulate_as_worker
    from stream.cli.services import start_redis
    from stream.settings import Settings
    from stream.worker.service import tune_process
    import stream.worker.in_memory as in_memory

    work, catalogue, events = trained_replay("skipcache-bench-stages-", args.users)
    artifact = load(work / "m.joblib")
    redis = start_redis(workdir=work / "redis")
    try:
        def settings(tag: str) -> Settings:
            return Settings(partitions=args.partitions, warm_partitions=args.partitions,
                            redis_url=f"redis://127.0.0.1:{redis.port}/0", redis_prefix=tag)

        def stages(tag: str, profile=None) -> tuple[float, dict]:
            st = settings(tag)
            store = build_store(st)
            worker = build_worker(st, store=store, catalogue=catalogue, artifact=artifact,
                                  sinks=in_memory.list_sinks())
            tune_process(args.batch * args.partitions)  # as the live worker (its batch: over the partitions)
            spent = [0.0]
            for stage in worker.stages.values():  # CPU inside the checkpoints only
                stage.checkpoint.run = timed(stage.checkpoint.run, spent, profile)
            in_memory.replay_in_memory(worker, events, args.batch)
            figures = live_figures(st, store, Catalogue())
            del worker
            gc.unfreeze()  # the next run starts as this one did
            gc.collect()
            return spent[0], figures

        n = len(events)
        print(f"events: {n:,} ({args.users} users), {args.partitions} + {args.partitions} partitions, "
              f"{args.batch:,} events per partition per checkpoint")
        # a first run in this process spent ~5 s in the kernel (page faults) that the next runs,
        # and the live worker (~1 µs per event in the kernel), do not: it warms up, unreported
        stages("warm-up")
        runs = [stages(f"run{i}") for i in range(args.runs)]
        # after the stages: past 100,000 events simulate forks a helper for its warm stage, whose
        # CPU is counted here; the stages' runs never follow a fork of this process
        started = cpu_with_children()
        expected = simulate_as_worker(events, catalogue, artifact, settings("sim"), end_sessions=False)
        baseline = cpu_with_children() - started
        print(f"simulate, same events (the domain work alone):  {1e6 * baseline / n:6.1f} µs per event (CPU)")
        for i, (cpu, fig) in enumerate(runs):
            print(f"the worker's two stages, Redis state, run {i + 1}:    {1e6 * cpu / n:6.1f} µs per event (CPU), "
                  f"{cpu / baseline:.2f}x simulate; {n / cpu:,.0f} events per CPU second")
        print(f"figures: the stages {fig['predictions']:,} predictions, accuracy {fig['accuracy']:.4f}, hit ratio "
              f"{fig['full_play_hit_ratio']:.4f}; simulate {expected['predictions']:,}, {expected['accuracy']:.4f}, "
              f"{expected['full_play_hit_ratio']:.4f}")
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            stages("profiled", profile)
            print("profile (cProfile inside the checkpoints, one more run; its own overhead roughly doubles "
                  "the times):")
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            if args.profile_out:
                profile.dump_stats(args.profile_out)
    finally:
        redis.proc.kill()
        redis.proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def cpu_with_children() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(run, spent: list[float], profile=None):
    async def wrapper(work):
        started = time.process_time()
        if profile is not None:
            profile.enable()
        try:
            return await run(work)
        finally:
            if profile is not None:
                profile.disable()
            spent[0] += time.process_time() - started
    return wrapper


if __name__ == "__main__":
    main()
