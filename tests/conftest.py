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
    return _generated(tmp_path_factory, "short", users=100, seed=11, profile="short")


@pytest.fixture(scope="session")
def noisy_data(tmp_path_factory) -> Path:
    return _generated(tmp_path_factory, "noisy", users=150, seed=5, profile="long", noise=0.1)


@pytest.fixture
def real_data() -> Path:
    if not (REAL / "sessions.jsonl.xz").exists():
        pytest.skip("the real 23Z export is not beside this checkout")
    return REAL
