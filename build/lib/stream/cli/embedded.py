"""`skipcache up`: the whole live system on one machine, on free local ports, for a demo or a try.

Starts a Tansu broker and redis-server, trains a model if none is given, starts the worker as its
own process, replays the data through Kafka, prints live figures from Redis, and stops everything
it started when the replay has been processed or on Ctrl-C."""
from __future__ import annotations

import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from stream.cli.jobs import generate_export, live_figures, load_replay, train_model
from stream.producer import replay
from stream.cli.reports import render_generated, render_status, render_training
from stream.cli.services import (ServiceError, Stack, create_topics, free_port, start_redis, start_redis_cluster,
                                 start_tansu, start_worker, wait_http)
from stream.settings import Settings
from stream.bootstrap import build_store, load_catalogue


@dataclass(frozen=True)
class UpOptions:
    data: str | None = None  # an export (None: generate one)
    model: str | None = None  # an artifact (None: train linear_svc on the first half of the data)
    out: str = "out/up"
    users: int = 300
    speed: str = "max"  # or X times event time
    partitions: int | None = None
    keep: bool = False  # keep running after the replay
    redis_cluster: int = 0  # N > 0: a local cluster of N primaries, each with a replica, instead of one server


def run_up(args: UpOptions) -> int:
    out = Path(args.out).resolve()  # servers change directory: give them absolute paths
    out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if not data:
        data = str(out / "data")
        if not (Path(data) / "sessions.jsonl").exists():
            print(render_generated(generate_export(data, args.users, 0, "long")))
    model = args.model
    if not model:
        model = str(out / "model.joblib")
        if not Path(model).exists():
            print(render_training(train_model(data, model, "linear_svc", 0.5, 0), model))
    base = Settings.from_env()
    partitions = args.partitions or base.partitions
    stack = Stack()
    worker = None
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            kafka = stack.add(start_tansu(workdir=out / "tansu"))
            if args.redis_cluster:
                redis = stack.add(start_redis_cluster(args.redis_cluster, 1, workdir=out / "redis-cluster",
                                                      binary=base.redis_server))
            else:
                redis = stack.add(start_redis(workdir=out / "redis", binary=base.redis_server))
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        web_port = free_port()
        token = base.api_token or secrets.token_urlsafe(24)  # this run's: no default secret opens the API
        env = {"SKIPCACHE_API_TOKEN": token, "SKIPCACHE_KAFKA": f"127.0.0.1:{kafka.port}", "SKIPCACHE_REDIS": redis.url if args.redis_cluster else f"redis://127.0.0.1:{redis.port}/0",
               "SKIPCACHE_MODEL": str(Path(model).resolve()), "SKIPCACHE_DATA": str(Path(data).resolve()),
               "SKIPCACHE_WEB_PORT": str(web_port), "SKIPCACHE_PARTITIONS": str(partitions)}
        settings = Settings.from_env(env)
        create_topics(settings.kafka_bootstrap, settings.topics)
        where = (f"a cluster of {args.redis_cluster} primaries + {args.redis_cluster} replicas at {redis.url}"
                 if args.redis_cluster else f"{Path(redis.proc.args[0]).name} on 127.0.0.1:{redis.port}")
        print(f"Tansu on 127.0.0.1:{kafka.port}, {where}; "
              f"starting the worker (web on 127.0.0.1:{web_port}, log {out / 'worker.log'})")
        print(f"API token of this run{'' if base.api_token else ' (generated)'}: change the threshold with\n"
              f"  curl -X PUT -H 'Authorization: Bearer {token}' -d '{{\"threshold\": 0.6}}' "
              f"http://127.0.0.1:{web_port}/threshold")
        worker = start_worker(env, out / "worker.log")
        wait_http(f"http://127.0.0.1:{web_port}/healthz", proc=worker)
        ds, events = load_replay(data)
        speed = None if args.speed == "max" else float(args.speed)
        summary = replay(events, settings.kafka_bootstrap, settings.topic_sessions, speed, None, ds.rejections.total)
        print(summary.render())
        total = summary.sent
        started = time.monotonic()
        store, catalogue = build_store(settings), load_catalogue(settings)
        while True:
            fig = live_figures(settings, store, catalogue)
            done = sum(fig["offsets"]["predict"].values())
            print(f"[{time.monotonic() - started:5.1f} s] applied {done:,}/{total:,}  {render_status(fig)}", flush=True)
            if done >= total and fig["warm_caught_up"] and not args.keep:
                break
            if worker.poll() is not None:
                print(f"error: the worker exited with {worker.returncode}; see {out / 'worker.log'}", file=sys.stderr)
                return 1
            time.sleep(2.0)
        print(f"\ndone: predictions {fig['predictions']:,}, live accuracy {fig['accuracy']:.3f} "
              f"(majority {fig['majority_accuracy']:.3f}), full-play hit ratio {fig['full_play_hit_ratio']:.3f}, "
              f"promotions {fig['promotions']:,} (precision {fig['promotion_precision']:.3f})")
        return 0
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
        return 130
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(15)
            except Exception:
                worker.kill()
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    """SIGTERM or SIGHUP (a service manager, a closed terminal) stops the stack as Ctrl-C does:
    without it the servers this command started would outlive it."""
    raise KeyboardInterrupt
