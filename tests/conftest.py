"""Shared fixtures: generated exports (session-scoped, small) and the real one when present."""
from __future__ import annotations

from pathlib import Path

import pytest

from stream.synthetic import generate

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pozytywka-23Z-v2"


def _generated(tmp_path_factory, name: str, **kwargs) -> Path:
    out = tmp_path_factory.mktemp(name)
    generate(out, progress=False, **kwargs)
    return out


@pytest.fixture(scope="session")
def long_data(tmp_path_factory) -> Path:
    return _generated(tmp_path_factory, "long", users=1000, seed=7, profile="long")


@pytest.fixture(scope="session")
def small_long_data(tmp_path_factory) -> Path:
    return _generated(tmp_path_factory, "small_long", users=120, seed=3, profile="long")


@pytest.fixture(scope="session")
def short_data(tmp_path_factory) -> Path:
    return _generated(tmp_path_factory, "short", users=60, seed=11, profile="short")


@pytest.fixture(scope="session")
def noisy_data(tmp_path_factory) -> Path:
    return _generated(tmp_path_factory, "noisy", users=150, seed=5, profile="long", noise=0.1)


MAY_SKIP = ("prometheus",)
"""Reasons an integration test may skip for: a binary only Debian's packages have."""
_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and "integration" in report.keywords:
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(word in reason for word in MAY_SKIP):
            _skipped.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _skipped:
        print("\nKafka/Redis integration tests must not skip (their servers come with the package):\n  "
              + "\n  ".join(_skipped))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def real_data() -> Path:
    if not (REAL / "sessions.jsonl.xz").exists():
        pytest.skip("the real 23Z export is not beside this checkout")
    return REAL
