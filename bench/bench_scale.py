"""Issue 19: the largest exports on one machine. `python bench/bench_scale.py [--events 15000000]`

Generates (once, under $SKIPCACHE_BENCH_SCALE, default /tmp/skipcache-bench-scale-<N>) a
long-profile export of about ``--events`` events, then runs, each in a fresh process as a user
would, `skipcache inspect`, `skipcache evaluate --models linear_svc,hist_gb`, `skipcache train`
and `skipcache simulate`, and prints each one's wall time, peak resident memory (the child's
own, from wait4) and bytes of peak memory per event. The reader is timed on the session file
beside a bare `orjson.loads` loop over the same lines in the same run (the ratio is the figure
that holds across machines). The jobs' JSON carries the phase timings that explain the totals.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT


def _tree_pss(pid: int) -> int:
    """Proportional set size of a process and its children, in bytes: shared pages (a forked
    helper's copy-on-write view of its parent) counted once, where summing RSS counts them twice."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_job(args: list[str], env: dict) -> dict:
    """One `skipcache` command in a fresh process: wall seconds, the process's own peak RSS
    (wait4), and the peak PSS of it with its helpers (sampled twice a second)."""
    import threading

    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_pss = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak_pss[0] = max(peak_pss[0], _tree_pss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"`skipcache {' '.join(args)}` failed ({proc.returncode}):\n{err[-3000:]}")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": time.perf_counter() - started, "peak_rss": usage.ru_maxrss * 1024,
            "peak_pss": peak_pss[0], "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "children_cpu": children.ru_utime + children.ru_stime}


def reader_vs_orjson(path: Path) -> dict:
    """The columnar reader against the floor any per-line reader has: orjson.loads on each line."""
    import orjson

    from models.rejections import Rejections
    from stream.files import iter_blocks, read_sessions

    started = time.perf_counter()
    cols, lines, _ = read_sessions(path, Rejections(), progress=False)
    reader_s = time.perf_counter() - started
    events = len(cols)
    del cols
    loads = orjson.loads
    started = time.perf_counter()
    n = 0
    for block in iter_blocks(path, progress=False):
        for raw in bytes(block).split(b"\n"):
            if raw:
                loads(raw)
                n += 1
    raw_s = time.perf_counter() - started
    return {"lines": lines, "events": events, "reader_lines_per_s": lines / reader_s,
            "orjson_lines_per_s": n / raw_s, "ratio": (lines / reader_s) / (n / raw_s)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=15_000_000)
    ap.add_argument("--skip-reader", action="store_true")
    args = ap.parse_args()
    data = Path(os.environ.get("SKIPCACHE_BENCH_SCALE", f"/tmp/skipcache-bench-scale-{args.events}"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    if not (data / ".complete").exists():
        job = run_job(["generate", "--out", str(data), "--events", str(args.events), "--seed", "1"], env)
        (data / ".complete").write_text("")
        print(f"generate: {job['seconds']:.0f} s, peak {job['peak_rss'] / 2**20:,.0f} MiB")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"skipcache-bench-scale-out-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"export: {data} ({(data / 'sessions.jsonl').stat().st_size / 2**30:.2f} GiB of sessions.jsonl); "
          f"{os.cpu_count()} cores")
    if not args.skip_reader:
        r = reader_vs_orjson(data / "sessions.jsonl")
        print(f"reader: {r['reader_lines_per_s']:,.0f} lines/s; bare orjson.loads loop {r['orjson_lines_per_s']:,.0f} "
              f"lines/s; ratio {r['ratio']:.2f}x  ({r['lines']:,} lines, {r['events']:,} events)")
    jobs = [("inspect", ["inspect", "--data", str(data), "--json", str(work / "inspect.json")]),
            ("evaluate", ["evaluate", "--data", str(data), "--models", "linear_svc,hist_gb",
                          "--json", str(work / "evaluate.json")]),
            ("train", ["train", "--data", str(data), "--out", str(work / "m.joblib"), "--train-fraction", "0.7"]),
            ("simulate", ["simulate", "--data", str(data), "--model", str(work / "m.joblib"),
                          "--json", str(work / "simulate.json")])]
    events = None
    for name, argv in jobs:
        job = run_job(argv, env)
        out = work / f"{name}.json"
        result = json.loads(out.read_text()) if out.exists() else {}
        events = result.get("events", events)
        per_event = f"{job['peak_rss'] / events:,.0f} B/event" if events else ""
        print(f"{name:<9} {job['seconds']:6.0f} s wall, {job['cpu_seconds']:6.0f} s cpu, peak RSS {job['peak_rss'] / 2**30:5.2f} GiB "
              f"{per_event}; peak PSS with helpers {job['peak_pss'] / 2**30:5.2f} GiB", flush=True)
        timings = result.get("timings") or result.get("reading")
        if timings:
            print("          " + ", ".join(f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v:,}"
                                           for k, v in timings.items()))
        if name == "evaluate":
            for m, fig in result["models"].items():
                print(f"          {m}: accuracy {fig['accuracy']:.4f} (majority {result['majority_accuracy']:.4f}), "
                      f"roc_auc {fig['roc_auc']:.4f}, fit {fig['fit_seconds']:.0f} s on {fig['train_rows']:,} rows")
        if name == "simulate":
            m = result["policies"]["model"]
            print(f"          {result['events_per_second']:,.0f} events/s in the replay loop; model: accuracy "
                  f"{m['accuracy']:.4f} (majority {m['majority_accuracy']:.4f}), full-play hit ratio "
                  f"{m['full_play_hit_ratio']:.4f}")


if __name__ == "__main__":
    main()
