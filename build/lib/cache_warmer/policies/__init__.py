"""Cache policies by kind: one file per policy, one line per policy in ``POLICIES``.

Adding one: write a ``CachePolicy`` subclass with a ``kind`` and ``played`` and/or ``upcoming``
(see ``cache_policy.py``),
then register it here (or with ``register_policy`` from outside, as a test does)."""
from __future__ import annotations

from .cache_policy import CachePolicy, Want
from .lru import LruPolicy
from .oracle import ORACLE, OraclePolicy
from .promote_all import PromoteAllPolicy
from .static import StaticPolicy
from .threshold import ThresholdPolicy

POLICIES: dict[str, type[CachePolicy]] = {
    StaticPolicy.kind: StaticPolicy,
    LruPolicy.kind: LruPolicy,
    PromoteAllPolicy.kind: PromoteAllPolicy,
    ThresholdPolicy.kind: ThresholdPolicy,
    OraclePolicy.kind: OraclePolicy,
}


def register_policy(cls: type[CachePolicy]) -> type[CachePolicy]:
    if not cls.kind or cls.kind in POLICIES and POLICIES[cls.kind] is not cls:
        raise ValueError(f"policy kind {cls.kind!r} is empty or taken")
    POLICIES[cls.kind] = cls
    return cls


def make_policy(kind: str, name: str | None = None, **settings) -> CachePolicy:
    try:
        cls = POLICIES[kind]
    except KeyError:
        raise ValueError(f"unknown policy kind {kind!r}; known: {', '.join(sorted(POLICIES))}") from None
    return cls(name or kind, **settings)


def standard_policies(models: list[str], threshold: float = 0.5, fast_threshold: float = 0.95,
                      with_naive: bool = True) -> list[CachePolicy]:
    """The comparison ``skipcache simulate`` prints: baselines, each model, and the ceiling."""
    policies: list[CachePolicy] = [StaticPolicy("static"), LruPolicy("lru"), PromoteAllPolicy("promote_all")]
    if with_naive:
        # the naive rule's score is 0 or 1: promote to medium on a genre match, never to fast
        policies.append(ThresholdPolicy("naive", "naive", 0.5, 1.1))
    policies += [ThresholdPolicy(m, m, threshold, fast_threshold) for m in models]
    policies.append(OraclePolicy("oracle"))
    return policies


__all__ = ["CachePolicy", "Want", "POLICIES", "ORACLE", "register_policy", "make_policy", "standard_policies",
           "StaticPolicy", "LruPolicy", "PromoteAllPolicy", "ThresholdPolicy", "OraclePolicy"]
