"""The `skipcache` command: one console script, one subcommand per job."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import orjson

log = logging.getLogger("skipcache")


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
                                            | orjson.OPT_NON_STR_KEYS))
        print(f"wrote {path}", file=sys.stderr)


def load_replay(data: str, progress: bool = True):
    """Read an export and put its events in replay order (see models.replay)."""
    from models.replay import replay_order
    from stream.files import read_dataset

    ds = read_dataset(data, progress=progress)
    if not ds.events:
        raise SystemExit(f"error: {data} holds no readable events ({ds.rejections.total} lines rejected)")
    return ds, replay_order(ds.events)


# ---- subcommands ----------------------------------------------------------------------------
def cmd_inspect(args) -> int:
    from stream.files import read_dataset
    from stream.export_summary import render_export_summary, summarize_export

    summary = summarize_export(read_dataset(args.data))
    print(render_export_summary(summary))
    _write_json(args.json, summary)
    return 0


def cmd_generate(args) -> int:
    from stream.synthetic import generate

    started = time.perf_counter()
    counts = generate(args.out, users=args.users, seed=args.seed, profile=args.profile,
                      noise=args.noise, tracks=args.tracks)
    print(f"wrote {counts['events']:,} events ({counts['plays']:,} plays, {counts['users']:,} users, "
          f"{counts['tracks']:,} tracks) to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_train(args) -> int:
    from models.artifacts import save
    from models.evaluation import build_table, train_artifact
    from models.features import EngineConfig

    ds, events = load_replay(args.data)
    config = EngineConfig()
    table = build_table(events, ds.catalogue, config)
    art = train_artifact(table, args.model, args.train_fraction, ds.fingerprint, config, args.seed)
    save(art, args.out)
    w = art.train_window
    print(f"trained {art.model} on {w['plays']:,} plays ({w['rows_used']:,} rows used) with "
          f"{len(art.feature_names)} features in {art.metrics['fit_seconds']:.1f} s -> {args.out}")
    test = art.metrics.get("test")
    if test:
        print(f"held-out later plays: {test['plays']:,}  accuracy {test['accuracy']:.3f}  "
              f"(majority {test['majority_accuracy']:.3f})  roc_auc {test['roc_auc']:.3f}")
    return 0


def render_evaluation(result: dict) -> str:
    s = result["split"]
    lines = [f"split by time: {s['train_plays']:,} training plays, {s['test_plays']:,} test plays",
             f"majority-class accuracy of the test part: {result['majority_accuracy']:.3f}", "",
             f"{'model':<14}{'accuracy':>9}{'vs maj.':>9}{'roc_auc':>9}{'prec.':>8}{'recall':>8}{'f1':>7}{'brier':>8}{'fit s':>8}"]
    for name, m in result["models"].items():
        lines.append(f"{name:<14}{m['accuracy']:>9.3f}{m['accuracy'] - result['majority_accuracy']:>+9.3f}"
                     f"{m['roc_auc']:>9.3f}{m['precision']:>8.3f}{m['recall']:>8.3f}{m['f1']:>7.3f}"
                     f"{m['brier']:>8.3f}{m['fit_seconds']:>8.1f}")
    lines.append("(precision, recall and f1 are of the 'played in full' class)")
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from models.estimators import MODEL_NAMES
    from models.evaluation import build_table, evaluate

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {unknown}: choose from {', '.join(MODEL_NAMES)}")
    started = time.perf_counter()
    ds, events = load_replay(args.data)
    table = build_table(events, ds.catalogue)
    result = evaluate(table, models, args.train_fraction, args.seed)
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    print(render_evaluation(result))
    _write_json(args.json, result)
    return 0


def cmd_demo(args) -> int:
    """The main job on an embedded default: generate (unless --data) -> train -> evaluate."""
    out = Path(args.out)
    data = args.data
    if not data:
        data = str(out / "data")
        if not (Path(data) / "sessions.jsonl").exists():
            cmd_generate(argparse.Namespace(out=data, users=args.users, seed=args.seed, profile="long",
                                            noise=0.0, tracks=None))
    model = str(out / "model.joblib")
    cmd_train(argparse.Namespace(data=data, model="linear_svc", out=model, train_fraction=0.7, seed=args.seed))
    print()
    cmd_evaluate(argparse.Namespace(data=data, models="naive,linear_svc,hist_gb", train_fraction=0.7,
                                    json=str(out / "evaluate.json"), seed=args.seed))
    print()
    from stream.settings import Settings

    st = Settings.from_env()
    cmd_simulate(argparse.Namespace(
        data=data, model=[model], threshold=st.threshold, fast_threshold=st.fast_threshold,
        json=str(out / "simulate.json"), plot=str(out / "simulate.png"), batch_size=20_000, partitions=1, ab_share=None,
        fast_capacity=st.fast_capacity, medium_capacity=st.medium_capacity, transfer_cost=st.transfer_cost,
        cold_after_hours=st.cold_after_hours, hit_value=0.002, count="after-training"))
    return 0


def _tier_config(args, catalogue, events):
    from cache_warmer.tiers import TierConfig

    return TierConfig.for_catalogue(catalogue, args.fast_capacity, args.medium_capacity, args.transfer_cost,
                                    args.cold_after_hours, n_tracks=len({e.track_id for e in events if e.track_id}))


def _count_from(args):
    return float("-inf") if args.count == "all" else None


def render_simulation(result: dict) -> str:
    from models.events import iso_utc

    cw = result["counted_window"]
    lines = [f"{result['events']:,} events, {result['plays']:,} plays; counted: {cw['rule']}"
             + (f" (after {iso_utc(cw['from_exclusive'])})" if cw["from_exclusive"] else ""),
             f"tiers: fast {result['tiers']['fast_capacity']:,} tracks, medium {result['tiers']['medium_capacity']:,} tracks; "
             f"{result['events_per_second']:,.0f} events/s", "",
             f"{'policy':<13}{'full-hit':>9}{'hit':>7}{'fast':>7}{'medium':>8}{'promos':>8}{'wasted':>8}{'prec.':>7}"
             f"{'cost/day':>10}{'transfer':>10}{'net':>9}{'acc.':>7}{'maj.':>7}{'auc':>7}"]
    for name, f in result["policies"].items():
        acc = f"{f['accuracy']:>7.3f}{f['majority_accuracy']:>7.3f}{f['roc_auc']:>7.3f}" if "accuracy" in f else f"{'':>21}"
        lines.append(f"{name:<13}{f['full_play_hit_ratio']:>9.3f}{f['hit_ratio']:>7.3f}{f['hits_by_tier']['fast']:>7,}"
                     f"{f['hits_by_tier']['medium']:>8,}{f['promotions']:>8,}{f['wasted_promotions']:>8,}"
                     f"{f['promotion_precision']:>7.3f}{f['storage_cost_per_day']:>10.2f}{f['transfer_cost']:>10.2f}"
                     f"{f['net_value']:>9.1f}{acc}")
    lines.append("(full-hit: plays played in full that found their track in fast/medium; prec.: promotions whose "
                 "first play was played in full; acc./auc: live predictions of model policies at 0.5)")
    return "\n".join(lines)


def cmd_simulate(args) -> int:
    from cache_warmer.simulation import Objective, simulate
    from models.artifacts import load
    from stream.plots import plot_simulation

    artifacts = [load(m) for m in args.model]
    ds, events = load_replay(args.data)
    from stream.kafka_io import partition_of

    shards = max(1, args.partitions)
    result = simulate(events, ds.catalogue, artifacts, _tier_config(args, ds.catalogue, events),
                      threshold=args.threshold, fast_threshold=args.fast_threshold,
                      count_from=_count_from(args), objective=Objective(args.hit_value),
                      batch_size=args.batch_size, shards=shards,
                      shard_of=lambda user_id: partition_of(user_id, shards), ab_share=args.ab_share)
    result["rejected"] = ds.rejections.as_dict()
    print(render_simulation(result))
    _write_json(args.json, result)
    if args.plot:
        print(f"wrote {plot_simulation(result, args.plot)}", file=sys.stderr)
    return 0


def cmd_sweep(args) -> int:
    from cache_warmer.simulation import Objective, parse_threshold_range, sweep
    from models.artifacts import load
    from stream.plots import plot_sweep

    thresholds = parse_threshold_range(args.thresholds)
    artifact = load(args.model)
    ds, events = load_replay(args.data)
    result = sweep(events, ds.catalogue, artifact, thresholds, _tier_config(args, ds.catalogue, events),
                   fast_threshold=args.fast_threshold, objective=Objective(args.hit_value),
                   count_from=_count_from(args))
    print(f"{'threshold':>9}{'full-hit':>9}{'hit':>7}{'promos':>8}{'wasted':>8}{'prec.':>7}{'cost/day':>10}{'transfer':>10}{'net':>9}")
    for r in result["thresholds"]:
        mark = "  <- best" if r is result["best"] else ""
        print(f"{r['threshold']:>9.3f}{r['full_play_hit_ratio']:>9.3f}{r['hit_ratio']:>7.3f}{r['promotions']:>8,}"
              f"{r['wasted_promotions']:>8,}{r['promotion_precision']:>7.3f}{r['storage_cost_per_day']:>10.2f}"
              f"{r['transfer_cost']:>10.2f}{r['net_value']:>9.1f}{mark}")
    print(f"best threshold {result['best']['threshold']:.3f}: net value {result['best']['net_value']:.1f} "
          f"({result['objective']['definition']}, hit_value={args.hit_value})")
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
    from stream.app import create_app
    from stream.settings import Settings

    settings = Settings.from_env()
    app = create_app(settings)
    sys.argv = ["skipcache-worker", "worker", "-l", settings.log_level] + (["--without-web"] if args.no_web else [])
    app.main()
    return 0


def cmd_replay(args) -> int:
    from stream.producer import replay
    from stream.services import create_topics
    from stream.settings import Settings

    st = Settings.from_env()
    bootstrap = args.bootstrap or st.kafka_bootstrap
    ds, events = load_replay(args.data)
    create_topics(bootstrap, {st.topic_sessions: st.partitions, st.topic_commands: 1, st.topic_dead_letter: 1})
    speed = None if args.speed == "max" else float(args.speed)
    summary = replay(events, bootstrap, st.topic_sessions, speed, args.limit, ds.rejections.total)
    print(summary.render())
    return 0


def cmd_threshold(args) -> int:
    from stream.settings import Settings
    from stream.web import parse_threshold_body
    from stream.wiring import build_store

    st = Settings.from_env()
    store = build_store(st)
    current = {"threshold": st.threshold, "fast_threshold": st.fast_threshold, **store.config()}
    if args.action == "set":
        body = {"threshold": args.value} if args.fast is None else {"threshold": args.value, "fast_threshold": args.fast}
        store.set_config(**parse_threshold_body(orjson.dumps(body), current))
        current.update(store.config())
        print("set (workers pick it up within a second):", end=" ")
    print(f"threshold {current['threshold']:.3f}  fast_threshold {current['fast_threshold']:.3f}")
    return 0


def worker_figures(settings, partitions: int | None = None, store=None, catalogue=None) -> dict:
    """The live worker's figures, read back from Redis (pass ``store`` and ``catalogue`` when
    polling, so they are not rebuilt on every call)."""
    from stream.partition_runtime import summarize_store
    from stream.wiring import build_store, load_catalogue, tier_config_for
    from cache_warmer.policies import Policy

    store = store or build_store(settings)
    catalogue = catalogue if catalogue is not None else load_catalogue(settings)
    n = partitions or settings.partitions
    fig = summarize_store(store, list(range(n)), Policy("model", "score", "model"),
                          tier_config_for(settings, catalogue), catalogue)
    fig["offsets"] = {p: store.offset(p) for p in range(n)}
    fig["events_by_type"] = store.counters("events")
    fig["rejected"] = store.counters("rejected")
    return fig


def render_status(fig: dict) -> str:
    acc = f"{fig['accuracy']:.3f}" if fig.get("predictions") else "-"
    maj = f"{fig['majority_accuracy']:.3f}" if fig.get("predictions") else "-"
    return (f"events {sum(fig['events_by_type'].values()):,}  predictions {fig.get('predictions', 0):,}  "
            f"accuracy {acc} (majority {maj})  full-play hit ratio {fig['full_play_hit_ratio']:.3f}  "
            f"promotions {fig['promotions']:,} (wasted {fig['wasted_promotions']:,})  "
            f"rejected {sum(fig['rejected'].values()):,}")


def cmd_status(args) -> int:
    from stream.settings import Settings

    fig = worker_figures(Settings.from_env())
    print(render_status(fig))
    _write_json(args.json, fig)
    return 0


def render_ab(result: dict) -> str:
    lines = [f"{'variant':<8}{'predictions':>12}{'accuracy':>10}"]
    for v, r in result["variants"].items():
        acc = f"{r['accuracy']:.4f}" if r["predictions"] else "-"
        lines.append(f"{v:<8}{r['predictions']:>12,}{acc:>10}")
    if result.get("leader") is not None or result["difference"] == result["difference"]:
        lo, hi = result["ci"]
        lines.append(f"B - A: {result['difference']:+.4f} (95% CI {lo:+.4f} .. {hi:+.4f}), "
                     f"two-proportion z = {result['z']:.2f}, p = {result['p_value']:.3g}"
                     + (f"; {result['leader']} is ahead" + (" (significant at 0.05)" if result["p_value"] < 0.05 else
                                                          " (not significant at 0.05)") if result["leader"] else ""))
    else:
        lines.append("not enough predictions in both variants yet")
    return "\n".join(lines)


def cmd_ab_report(args) -> int:
    from stream.settings import Settings
    from stream.web import ab_results
    from stream.wiring import build_store

    result = ab_results(build_store(Settings.from_env()))
    print(render_ab(result))
    _write_json(args.json, result)
    return 0


def cmd_dashboard(args) -> int:
    from stream.dashboard import write

    print(f"wrote {write(args.out)}")
    return 0


def cmd_up(args) -> int:
    from stream.embedded import run_up

    return run_up(args)


def cmd_settings(args) -> int:
    from stream.settings import Settings

    print(Settings.table())
    return 0


def build_parser() -> argparse.ArgumentParser:
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

    from stream.settings import Settings

    settings = Settings.from_env()
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
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("replay", help="send an export's events to Kafka in time order")
    s.add_argument("--data", required=True)
    s.add_argument("--bootstrap", help="HOST:PORT (default: SKIPCACHE_KAFKA)")
    s.add_argument("--speed", default="max", help="'max' or X times event time")
    s.add_argument("--limit", type=int)
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("threshold", help="show or set the promotion thresholds of every worker")
    s.add_argument("action", choices=("show", "set"))
    s.add_argument("value", nargs="?", type=float)
    s.add_argument("--fast", type=float, help="fast-tier threshold")
    s.set_defaults(func=cmd_threshold)

    s = sub.add_parser("status", help="the live worker's figures from Redis")
    s.add_argument("--json")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("ab-report", help="the A/B experiment: per-variant accuracy, difference, CI, p-value")
    s.add_argument("--json")
    s.set_defaults(func=cmd_ab_report)

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
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("settings", help="print the environment variables skipcache reads")
    s.set_defaults(func=cmd_settings)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("kafka", "aiokafka", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    from models.artifacts import ArtifactError
    from stream.files import DataError

    try:
        return args.func(args) or 0
    except (DataError, ArtifactError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
