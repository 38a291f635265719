"""Importing the worker's module builds and connects nothing; only faust's entry module does."""
import os
import subprocess
import sys


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
