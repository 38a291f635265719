"""Importing the worker's module builds and connects nothing; only faust's entry module does."""
import json
import os
import subprocess
import sys

from stream.worker.service import BLAS_THREADS, gc_thresholds


def _import(module: str) -> subprocess.CompletedProcess:
    # a configuration create_app refuses at once: importing must not get that far
    env = {**os.environ, "SKIPCACHE_WEB_HOST": "0.0.0.0", "SKIPCACHE_API_TOKEN": ""}
    return subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True,
                          timeout=120)


def test_importing_the_app_module_has_no_side_effects():
    assert _import("stream.worker.app").returncode == 0


def test_the_faust_entry_module_builds_the_app_from_the_settings():
    run = _import("stream.faust_main")
    assert run.returncode != 0 and "at least 16 characters" in run.stderr


def test_the_worker_scores_with_one_blas_thread_and_a_tuned_collector():
    """``tune_process`` (run once the worker's parts are built): in a process of its own, since
    it changes process-wide settings."""
    code = ("import gc, json, numpy; from threadpoolctl import threadpool_info; "
            "from stream.worker.service import tune_process; tune_process(10_000); "
            "print(json.dumps([[i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'], "
            "gc.get_threshold()]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    blas, thresholds = json.loads(run.stdout)
    assert blas and all(n == BLAS_THREADS for n in blas)
    assert tuple(thresholds) == gc_thresholds(10_000) == (500_000, 20, 10)
    assert gc_thresholds(100)[0] == 50_000  # never below the floor, whatever the batch
