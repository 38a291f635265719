"""The `skipcache` command: one console script, one subcommand per job. Each command parses its
arguments, calls the job in ``stream/cli/jobs.py`` and renders the result (``stream/cli/reports.py``)."""
from __future__ import annotations

import argparse
from dataclasses import replace
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from stream.settings import Settings

if TYPE_CHECKING:  # imported where used: the command starts without the jobs' imports
    from stream.cli.jobs import CacheOptions

log = logging.getLogger("skipcache")


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
                                            | orjson.OPT_NON_STR_KEYS))
        print(f"wrote {path}", file=sys.stderr)


def _cache(args) -> CacheOptions:
    from stream.cli.jobs import CacheOptions

    return CacheOptions(args.fast_capacity, args.medium_capacity, args.transfer_cost, args.cold_after_hours,
                        args.fast_threshold, args.hit_value, args.count)


# ---- subcommands: parse, call a job, render -------------------------------------------------
def cmd_inspect(args) -> int:
    from stream.export_summary import render_export_summary
    from stream.cli.jobs import inspect_export

    summary = inspect_export(args.data)
    print(render_export_summary(summary))
    _write_json(args.json, summary)
    return 0


def cmd_generate(args) -> int:
    from stream.cli.jobs import generate_export
    from stream.cli.reports import render_generated

    print(render_generated(generate_export(args.out, args.users, args.seed, args.profile, args.noise, args.tracks,
                                           events=args.events)))
    return 0


def cmd_train(args) -> int:
    from stream.cli.jobs import train_model
    from stream.cli.reports import render_training

    print(render_training(train_model(args.data, args.out, args.model, args.train_fraction, args.seed), args.out))
    return 0


def cmd_evaluate(args) -> int:
    from stream.cli.jobs import evaluate_models
    from stream.cli.reports import render_evaluation

    result = evaluate_models(args.data, [m.strip() for m in args.models.split(",") if m.strip()],
                             args.train_fraction, args.seed)
    print(render_evaluation(result))
    _write_json(args.json, result)
    return 0


def cmd_demo(args) -> int:
    """The offline path on a generated default: generate (unless --data), train, evaluate, simulate."""
    from stream import jobs
    from stream.cli.plots import plot_simulation
    from stream.cli.reports import render_evaluation, render_generated, render_simulation, render_training

    out = Path(args.out)
    data = args.data
    if not data:
        data = str(out / "data")
        if not (Path(data) / "sessions.jsonl").exists():
            print(render_generated(jobs.generate_export(data, args.users, args.seed, "long")))
    model = str(out / "model.joblib")
    print(render_training(jobs.train_model(data, model, "linear_svc", 0.7, args.seed), model), end="\n\n")
    evaluation = jobs.evaluate_models(data, ["naive", "linear_svc", "hist_gb"], 0.7, args.seed)
    print(render_evaluation(evaluation), end="\n\n")
    _write_json(str(out / "evaluate.json"), evaluation)
    settings = args.settings
    result = jobs.simulate_policies(data, [model], jobs.CacheOptions.from_settings(settings), settings.threshold)
    print(render_simulation(result))
    _write_json(str(out / "simulate.json"), result)
    print(f"wrote {plot_simulation(result, str(out / 'simulate.png'))}", file=sys.stderr)
    return 0


def cmd_simulate(args) -> int:
    from stream.cli.jobs import simulate_policies
    from stream.cli.plots import plot_simulation
    from stream.cli.reports import render_simulation

    result = simulate_policies(args.data, args.model, _cache(args), args.threshold, args.partitions,
                               args.batch_size, args.ab_share, args.audit_storage, args.session_gap or None,
                               warm_partitions=args.warm_partitions)
    print(render_simulation(result))
    _write_json(args.json, result)
    if args.plot:
        print(f"wrote {plot_simulation(result, args.plot)}", file=sys.stderr)
    return 0


def cmd_sweep(args) -> int:
    from cache_warmer.simulation import parse_threshold_range
    from stream.cli.jobs import sweep_thresholds
    from stream.cli.plots import plot_sweep
    from stream.cli.reports import render_sweep

    result = sweep_thresholds(args.data, args.model, parse_threshold_range(args.thresholds), _cache(args))
    print(render_sweep(result, args.hit_value))
    _write_json(args.json, result)
    if args.plot:
        print(f"wrote {plot_sweep(result, args.plot)}", file=sys.stderr)
    return 0


def _cache_options(s, settings) -> None:
    s.add_argument("--fast-capacity", type=int, default=settings.fast_capacity, help="tracks (0: 1%% of the catalogue)")
    s.add_argument("--medium-capacity", type=int, default=settings.medium_capacity, help="tracks (0: 10%% of the catalogue)")
    s.add_argument("--transfer-cost", type=float, default=settings.transfer_cost, help="cost of one promotion")
    s.add_argument("--cold-after-hours", type=float, default=settings.cold_after_hours)
    s.add_argument("--fast-threshold", type=float, default=settings.fast_threshold)
    s.add_argument("--hit-value", type=float, default=0.002, help="value of a full-play hit, for the objective")
    s.add_argument("--count", choices=("after-training", "all"), default="after-training",
                   help="which events the figures count (default: after the model's training window)")


def cmd_worker(args) -> int:
    """Run the Faust worker (same as `faust -A stream.faust_main worker`)."""
    from stream.worker.app import create_app

    settings = args.settings if args.stage is None else replace(args.settings, stage=args.stage)
    app = create_app(settings)
    sys.argv = ["skipcache-worker", "worker", "-l", settings.log_level] + (["--without-web"] if args.no_web else [])
    app.main()
    return 0


def cmd_replay(args) -> int:
    from stream.cli.jobs import load_replay
    from stream.producer import replay
    from stream.cli.services import create_topics

    st = args.settings
    bootstrap = args.bootstrap or st.kafka_bootstrap
    ds, events = load_replay(args.data)
    create_topics(bootstrap, st.topics)
    speed = None if args.speed == "max" else float(args.speed)
    print(replay(events, bootstrap, st.topic_sessions, speed, args.limit, ds.rejections.total).render())
    return 0


def cmd_schema(args) -> int:
    from models.contract import SCHEMA_TEXT, markdown_table

    print(markdown_table() if args.markdown else SCHEMA_TEXT, end="" if not args.markdown else "\n")
    return 0


def cmd_produce(args) -> int:
    import contextlib

    from models.parsing import TimeWindow
    from stream.files import open_binary
    from stream.producer import make_producer, produce

    st = args.settings
    bootstrap = args.bootstrap or st.kafka_bootstrap
    with contextlib.ExitStack() as stack:
        fh = sys.stdin.buffer if args.file == "-" else stack.enter_context(open_binary(Path(args.file)))
        producer = make_producer(bootstrap)
        stack.callback(producer.close)
        window = TimeWindow.from_date(st.earliest_event, st.max_ahead_seconds)
        summary = produce(fh, producer, args.topic or st.topic_sessions, args.key, window,
                          progress=args.file != "-")
    print(summary.render())
    _write_json(args.json, summary.to_json())
    return 0 if summary.sent or not summary.rejections.total else 1


def cmd_threshold(args) -> int:
    from stream.cli.jobs import threshold_advice, thresholds
    from stream.cli.reports import render_advice, render_thresholds

    if args.action == "advise":
        result = threshold_advice(args.settings, window_hours=args.window_hours)
        print(render_advice(result))
        _write_json(args.json, result)
        return 0
    if args.action == "set" and args.value is None and args.fast is None:
        raise ValueError("`threshold set` needs a value (and/or --fast)")
    result = (thresholds(args.settings, args.value, args.fast) if args.action == "set"
              else thresholds(args.settings))
    print(render_thresholds(result))
    _write_json(args.json, result)
    return 0


def cmd_status(args) -> int:
    from stream.cli.jobs import live_figures
    from stream.cli.reports import render_status

    fig = live_figures(args.settings)
    print(render_status(fig))
    _write_json(args.json, fig)
    return 0


def cmd_ab_report(args) -> int:
    from stream.cli.jobs import ab_report
    from stream.cli.reports import render_ab

    result = ab_report(args.settings)
    print(render_ab(result))
    _write_json(args.json, result)
    return 0


def cmd_state(args) -> int:
    from stream.bootstrap import build_store

    store = build_store(args.settings)
    moved, packed = store.migrate_layout()
    print(f"moved {moved:,} keys under their partitions' hash tags, and packed the track counts of {packed:,} keys "
          f"into one field per track (prefix {args.settings.redis_prefix!r})")
    return 0


def cmd_dashboard(args) -> int:
    from stream.cli.dashboard import write

    print(f"wrote {write(args.out)}")
    return 0


def cmd_up(args) -> int:
    from stream.cli.embedded import UpOptions, run_up

    return run_up(UpOptions(data=args.data, model=args.model, out=args.out, users=args.users, speed=args.speed,
                            partitions=args.partitions, keep=args.keep, redis_cluster=args.redis_cluster))


def cmd_settings(args) -> int:

    print(Settings.table())
    return 0


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """``settings`` give the defaults of the cache options."""
    from models.estimators import DEFAULT_MODELS, MODEL_NAMES

    p = argparse.ArgumentParser(prog="skipcache", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="what an export holds and what could not be read")
    s.add_argument("--data", required=True)
    s.add_argument("--json")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("generate", help="write a synthetic export in the real format")
    s.add_argument("--out", required=True)
    s.add_argument("--users", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--profile", choices=("long", "short"), default="long")
    s.add_argument("--noise", type=float, default=0.0, help="fraction of events given v1 noise")
    s.add_argument("--tracks", type=int, default=None, help="catalogue size (default: from --users)")
    s.add_argument("--events", type=int, default=None,
                   help="about this many events: sets --users from the profile's events per user "
                        "(e.g. --events 18000000 for the size of the largest releases)")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("train", help="train one model on the earliest plays and save it")
    s.add_argument("--data", required=True)
    s.add_argument("--model", choices=MODEL_NAMES, default="linear_svc")
    s.add_argument("--out", required=True)
    s.add_argument("--train-fraction", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="train and test every model with a split by time")
    s.add_argument("--data", required=True)
    s.add_argument("--models", default=",".join(DEFAULT_MODELS))
    s.add_argument("--train-fraction", type=float, default=0.7)
    s.add_argument("--json")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("demo", help="the main job on a generated default: generate, train, evaluate, simulate")
    s.add_argument("--data", help="an export to use instead of generating one")
    s.add_argument("--out", default="out")
    s.add_argument("--users", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("simulate", help="replay an export through the warmer and compare policies")
    s.add_argument("--data", required=True)
    s.add_argument("--model", required=True, action="append", help="model artifact (repeat for more)")
    s.add_argument("--threshold", type=float, default=settings.threshold)
    s.add_argument("--json")
    s.add_argument("--plot")
    s.add_argument("--batch-size", type=int, default=20_000)
    s.add_argument("--ab-share", type=float, default=None,
                   help="with two --model: add an 'ab' policy serving the second model to this share of users")
    s.add_argument("--partitions", type=int, default=1,
                   help="shard state and cache like a worker on a topic with this many partitions")
    s.add_argument("--warm-partitions", type=int, default=None,
                   help="the warm stage's partitions (SKIPCACHE_WARM_PARTITIONS), if not as many")
    s.add_argument("--audit-storage", action="store_true",
                   help="apply every shard's commands to one placement and report where shards were wrong")
    s.add_argument("--session-gap", type=float, default=settings.session_gap_seconds,
                   help="seconds without an event that end a session (default: SKIPCACHE_SESSION_GAP, else the model's)")
    _cache_options(s, settings)
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("sweep", help="hit ratio, waste and cost against the promotion threshold")
    s.add_argument("--data", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--thresholds", default="0.05:0.95:0.05")
    s.add_argument("--json")
    s.add_argument("--plot")
    _cache_options(s, settings)
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("worker", help="run the live Faust worker (settings from the environment)")
    s.add_argument("--no-web", action="store_true")
    s.add_argument("--stage", choices=("predict", "warm", "both"), default=None,
                   help="the stage(s) this process runs (default: SKIPCACHE_STAGE, else both)")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("replay", help="send an export's events to Kafka in time order")
    s.add_argument("--data", required=True)
    s.add_argument("--bootstrap", help="HOST:PORT (default: SKIPCACHE_KAFKA)")
    s.add_argument("--speed", default="max", help="'max' or X times event time")
    s.add_argument("--limit", type=int)
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("produce", help="check JSON lines against the event contract and send them, keyed by user")
    s.add_argument("file", nargs="?", default="-", help="a JSON-lines file (.xz, .gz too), or - for stdin")
    s.add_argument("--bootstrap", help="HOST:PORT (default: SKIPCACHE_KAFKA)")
    s.add_argument("--topic", help="default: SKIPCACHE_TOPIC_SESSIONS")
    s.add_argument("--key", choices=("user", "session", "none"), default="user",
                   help="the message key: the user id (the contract), or the wrong ones, to try them")
    s.add_argument("--json", help="write the summary here")
    s.set_defaults(func=cmd_produce)

    s = sub.add_parser("schema", help="print the session event contract (JSON Schema)")
    s.add_argument("--markdown", action="store_true", help="the field table instead")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("threshold", help="show or set the promotion thresholds of every worker, or advise one "
                       "from the shadow placements")
    s.add_argument("action", choices=("show", "set", "advise"))
    s.add_argument("value", nargs="?", type=float)
    s.add_argument("--fast", type=float, help="fast-tier threshold")
    s.add_argument("--window-hours", type=int, default=24, help="advise: hours of event time to weigh (default 24)")
    s.add_argument("--json", help="also write the result to this file")
    s.set_defaults(func=cmd_threshold)

    s = sub.add_parser("status", help="the live worker's figures from Redis")
    s.add_argument("--json")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("ab-report", help="the A/B experiment: per-variant accuracy, difference, CI, p-value")
    s.add_argument("--json")
    s.set_defaults(func=cmd_ab_report)

    s = sub.add_parser("state", help="maintain the live state in Redis")
    s.add_argument("action", choices=["migrate"], help="migrate: move state of older layouts into this "
                   "one: keys under their partitions' hash tags, a track's counts in one field (once, with every "
                   "worker stopped)")
    s.set_defaults(func=cmd_state)

    s = sub.add_parser("dashboard", help="write the Grafana dashboard JSON (generated from code)")
    s.add_argument("--out", default="grafana/dashboards/skipcache.json")
    s.set_defaults(func=cmd_dashboard)

    s = sub.add_parser("up", help="start Tansu, Redis and the worker on free ports and replay data through them")
    s.add_argument("--data", help="an export (default: generate one)")
    s.add_argument("--model", help="a model artifact (default: train linear_svc on the data)")
    s.add_argument("--out", default="out/up")
    s.add_argument("--users", type=int, default=300)
    s.add_argument("--speed", default="max")
    s.add_argument("--partitions", type=int, default=None)
    s.add_argument("--keep", action="store_true", help="keep running after the replay (Ctrl-C stops)")
    s.add_argument("--redis-cluster", type=int, default=0, metavar="N",
                   help="the state on a local Redis/Valkey Cluster of N primaries, each with a replica")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("settings", help="print the environment variables skipcache reads")
    s.set_defaults(func=cmd_settings)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()  # read once, for every command
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    args.settings = settings
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("kafka", "aiokafka", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    import redis
    from redis.exceptions import RedisClusterException

    from models.artifacts import ArtifactError
    from stream.stores.redis_store import OldLayout
    from stream.files import DataError

    try:
        return args.func(args) or 0
    except (DataError, ArtifactError, ValueError, OldLayout) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (redis.RedisError, RedisClusterException) as exc:
        print(f"error: Redis is unreachable ({exc}); is the worker's Redis running, and is SKIPCACHE_REDIS "
              "its URL?", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
