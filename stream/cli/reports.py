"""Text for people: what each job's result looks like on a terminal (``stream/cli/jobs.py`` makes
the results; the CLI prints these)."""
from __future__ import annotations

from models.artifacts import Artifact
from models.events import iso_utc


def render_generated(counts: dict) -> str:
    return (f"wrote {counts['events']:,} events ({counts['plays']:,} plays, {counts['users']:,} users, "
            f"{counts['tracks']:,} tracks) to {counts['out']} in {counts['seconds']:.1f} s")


def render_training(artifact: Artifact, out: str) -> str:
    w = artifact.train_window
    lines = [f"trained {artifact.model} on {w['plays']:,} plays ({w['rows_used']:,} rows used) with "
             f"{len(artifact.feature_names)} features in {artifact.metrics['fit_seconds']:.1f} s -> {out}",
             f"user half-life: {_half_life(artifact.engine_config.get('user_half_life_days'))}"
             + _choice(artifact.metrics.get("half_life_validation_auc"))]
    test = artifact.metrics.get("test")
    if test:
        lines.append(f"held-out later plays: {test['plays']:,}  accuracy {test['accuracy']:.3f}  "
                     f"(majority {test['majority_accuracy']:.3f})  roc_auc {test['roc_auc']:.3f}")
    return "\n".join(lines)


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
    if "user_half_life_days" in result:
        lines.append(f"user half-life: {_half_life(result['user_half_life_days'])}"
                     + _choice(result.get("half_life_validation_auc")))
    return "\n".join(lines)


def _half_life(days) -> str:
    return "none (no decay)" if days is None else f"{days:g} days"


def _choice(scores: dict | None) -> str:
    if not scores:
        return ""
    parts = ", ".join(f"{'none' if k == 'None' else k + ' d'}: {v:.4f}" for k, v in scores.items())
    return f" (chosen on validation inside the training window, roc_auc {parts})"


def render_simulation(result: dict) -> str:
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
    audited = {name: f["storage_audit"] for name, f in result["policies"].items() if "storage_audit" in f}
    if audited:
        lines += ["", f"storage audit, {result['tiers']['partitions']} warm partition(s): every partition's commands applied in time "
                      "order to one placement",
                  f"{'policy':<13}{'wrong belief':>13}{'reported hit':>13}{'storage hit':>12}{'contradicting':>14}"
                  f"{'multi-shard tracks':>19}"]
        for name, a in audited.items():
            lines.append(f"{name:<13}{a['wrong_belief_share']:>13.2%}{a['reported_hit_ratio']:>13.3f}"
                         f"{a['storage_hit_ratio']:>12.3f}{a['contradicting_commands']:>14,}"
                         f"{a['tracks_commanded_by_several_shards']:>19.1%}")
    return "\n".join(lines)


def render_sweep(result: dict, hit_value: float) -> str:
    lines = [f"{'threshold':>9}{'full-hit':>9}{'hit':>7}{'promos':>8}{'wasted':>8}{'prec.':>7}{'cost/day':>10}"
             f"{'transfer':>10}{'net':>9}"]
    for r in result["thresholds"]:
        mark = "  <- best" if r is result["best"] else ""
        lines.append(f"{r['threshold']:>9.3f}{r['full_play_hit_ratio']:>9.3f}{r['hit_ratio']:>7.3f}{r['promotions']:>8,}"
                     f"{r['wasted_promotions']:>8,}{r['promotion_precision']:>7.3f}{r['storage_cost_per_day']:>10.2f}"
                     f"{r['transfer_cost']:>10.2f}{r['net_value']:>9.1f}{mark}")
    lines.append(f"best threshold {result['best']['threshold']:.3f}: net value {result['best']['net_value']:.1f} "
                 f"({result['objective']['definition']}, hit_value={hit_value})")
    return "\n".join(lines)


def render_thresholds(result: dict) -> str:
    out = (("set (workers pick it up within a second): " if result["set"] else "")
           + f"threshold {result['threshold']:.3f}  fast_threshold {result['fast_threshold']:.3f}")
    if "shadow" in result:
        shadow, before = result["shadow"], result["live_before"]
        if shadow is None:
            running = ", ".join(result["shadows_running"]) or "none"
            out += (f"\nno shadow placement runs at {result['threshold']:g} (shadows: {running}; "
                    "SKIPCACHE_SHADOW_THRESHOLDS): nothing has shown yet what it does")
        else:
            out += "\nwhat the shadow at this threshold has shown, beside the live placement until now:\n"
            out += f"  {'':>10} {'full-play hit ratio':>20} {'promotions':>11} {'wasted':>8} {'precision':>10} {'net value':>10}\n"
            for name, f in (("shadow", shadow), ("live", before)):
                out += (f"  {name:>10} {_num(f['full_play_hit_ratio'], '.3f'):>20} {f['promotions']:>11,} "
                        f"{f['wasted_promotions']:>8,} {_num(f['promotion_precision'], '.3f'):>10} "
                        f"{_num(f['net_value'], '.4g'):>10}\n")
            out = out.rstrip("\n")
    return out


def _num(x, spec: str) -> str:
    return "-" if x is None or x != x else format(x, spec)


def render_advice(result: dict) -> str:
    lines = [f"threshold in force {result['threshold_in_force']:g}; window {result['window_hours']} h of event time; "
             f"net value = {result['hit_value']:g} x full-play hits - transfer - storage"]
    if "thresholds" in result:
        lines.append(f"  {'threshold':>9} {'net value':>10} {'vs live':>10} {'95% interval':>22} "
                     f"{'full-play hits':>15} {'promotions':>11}")
        live = result["live"]
        lines.append(f"  {'live':>9} {live['net_value']:>10.4g} {'':>10} {'':>22} {live['full_play_hits']:>15,} "
                     f"{live['promotions']:>11,}")
        for r in result["thresholds"]:
            ci = r.get("interval_95")
            ci_text = f"{ci[0]:.4g} .. {ci[1]:.4g}" if ci else "-"
            lines.append(f"  {r['threshold']:>9g} {r['net_value']:>10.4g} {r['over_live']:>+10.4g} {ci_text:>22} "
                         f"{r['full_play_hits']:>15,} {r['promotions']:>11,}")
    lines.append(f"advice ({result['verdict']}): {result['advice']}")
    return "\n".join(lines)


def render_status(fig: dict) -> str:
    acc = f"{fig['accuracy']:.3f}" if fig.get("predictions") else "-"
    maj = f"{fig['majority_accuracy']:.3f}" if fig.get("predictions") else "-"
    return (f"events {sum(fig['events_by_type'].values()):,}  predictions {fig.get('predictions', 0):,}  "
            f"accuracy {acc} (majority {maj})  full-play hit ratio {fig['full_play_hit_ratio']:.3f}  "
            f"promotions {fig['promotions']:,} (wasted {fig['wasted_promotions']:,})  "
            f"rejected {sum(fig['rejected'].values()):,}"
            + (f"  LATE ENTRIES {fig['warm_late_entries']:,} (applied behind event time: the cache figures are "
               f"approximate)" if fig.get("warm_late_entries") else "")
            + _contract_line(fig.get("contract") or {})
            + _shadow_line(fig))


def _shadow_line(fig: dict) -> str:
    shadows = fig.get("shadows") or {}
    if not shadows:
        return ""
    parts = [f"{name}: hit {_num(f['full_play_hit_ratio'], '.3f')} net {_num(f['net_value'], '.4g')}"
             for name, f in shadows.items()]
    return f"\nshadows (live net {_num(fig.get('net_value'), '.4g')}): " + "  ".join(parts)


def _contract_line(contract: dict) -> str:
    """What producers send otherwise than the contract asks (README: Producing session events)."""
    misrouted = sum(n for k, n in contract.items() if k.startswith("misrouted:"))
    out = ""
    if contract.get("plays_without_upcoming"):
        out += f"  plays without upcoming {int(contract['plays_without_upcoming']):,}"
    if contract.get("skip_before_play"):
        out += f"  skips before their play {int(contract['skip_before_play']):,} (matched)"
    if misrouted:
        out += (f"  MISROUTED {int(misrouted):,} (events on another user's partition: key them by user id; "
                f"forwarded through the repartition topic, {int(contract.get('repartitioned', 0)):,} applied there)")
    return out


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
