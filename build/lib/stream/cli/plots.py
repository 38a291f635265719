"""PNG figures for people: the simulation over time and the threshold sweep."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402


def _days(daily: dict) -> tuple[list, list]:
    keys = sorted(int(d) for d in daily)
    return [datetime.fromtimestamp(d * 86400, tz=timezone.utc) for d in keys], [daily[str(d)] for d in keys]


def plot_simulation(result: dict, path: str | Path) -> Path:
    """Per policy, over the counted window: the daily full-play hit ratio (7-day rolling) and the
    cumulative promotions and wasted promotions."""
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for name, daily in result["daily"].items():
        days, rows = _days(daily)
        if not days:
            continue
        ratio, cum_p, cum_w = [], [], []
        window: list = []
        tp = tw = 0
        for r in rows:
            window.append(r)
            window = window[-7:]
            full = sum(x[2] for x in window)
            ratio.append(sum(x[3] for x in window) / full if full else float("nan"))
            tp += r[4]
            tw += r[5]
            cum_p.append(tp)
            cum_w.append(tw)
        line, = ax1.plot(days, ratio, label=name)
        if name != "static":
            ax2.plot(days, cum_p, color=line.get_color(), label=f"{name} promotions")
            ax2.plot(days, cum_w, color=line.get_color(), linestyle="--", label=f"{name} wasted")
    ax1.set_ylabel("full-play hit ratio (7-day rolling)")
    ax1.set_ylim(0, 1.02)
    ax1.set_title(f"skipcache simulate: {result['plays']:,} plays, counted {result['counted_window']['rule']}")
    ax1.legend(loc="lower right", fontsize=8, ncol=3)
    ax1.grid(alpha=0.3)
    ax2.set_ylabel("promotions (cumulative count)")
    ax2.set_xlabel("event time (UTC date)")
    ax2.legend(loc="upper left", fontsize=7, ncol=3)
    ax2.grid(alpha=0.3)
    ax2.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    fig.autofmt_xdate()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(result: dict, path: str | Path) -> Path:
    rows = result["thresholds"]
    t = [r["threshold"] for r in rows]
    best = result["best"]["threshold"]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ax1.plot(t, [r["full_play_hit_ratio"] for r in rows], marker="o", label="full-play hit ratio")
    ax1.plot(t, [r["hit_ratio"] for r in rows], marker="s", label="hit ratio (all plays)")
    ax1.plot(t, [r["promotion_precision"] for r in rows], marker="^", label="promotion precision")
    ax1.axhline(result["static"]["full_play_hit_ratio"], color="grey", linestyle=":", label="static: full-play hit ratio")
    ax1.set_ylabel("ratio (0-1)")
    ax1.set_ylim(0, 1.02)
    ax1.legend(fontsize=8)
    ax2.plot(t, [r["promotions"] for r in rows], marker="o", label="promotions")
    ax2.plot(t, [r["wasted_promotions"] for r in rows], marker="s", label="wasted promotions")
    ax2.set_ylabel("promotions (count)")
    ax2.legend(fontsize=8)
    ax3.plot(t, [r["net_value"] for r in rows], marker="o", color="tab:green", label="net value")
    ax3.set_ylabel("net value over static\n(track_storage cost units)")
    ax3b = ax3.twinx()
    ax3b.plot(t, [r["transfer_cost"] for r in rows], marker=".", color="tab:red", alpha=0.6, label="transfer cost (right axis)")
    ax3b.set_ylabel("transfer cost (cost units)", color="tab:red")
    ax3b.legend(loc="lower right", fontsize=8)
    ax3.set_xlabel("promotion threshold: P(played in full) needed to promote to medium")
    ax3.legend(loc="lower left", fontsize=8)
    for ax in (ax1, ax2, ax3):
        ax.axvline(best, color="black", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    ax3.annotate(f"best {best:.2f}\nnet {result['best']['net_value']:.1f}", xy=(best, result["best"]["net_value"]),
                 xytext=(10, -30), textcoords="offset points", arrowprops={"arrowstyle": "->"})
    ax1.set_title(f"threshold sweep ({result['model']}); objective: {result['objective']['definition']},"
                  f"\nhit_value={result['objective']['hit_value']}, fast tier at P >= max(t, {result['fast_threshold']})",
                  fontsize=9)
    return _save(fig, path)
