"""A/B experiments: users split between two models by a stable hash of the user id, so a user
stays in one variant across restarts, workers and the simulation."""
from __future__ import annotations

import hashlib
import math

from scipy.stats import norm

AB = "ab"  # the scorer name of a policy that serves variant A or B by user


def variant_of(user_id: int, share_b: float) -> str:
    h = int.from_bytes(hashlib.blake2b(str(user_id).encode(), digest_size=8).digest(), "big")
    return "B" if h / 2**64 < share_b else "A"


def compare(a: dict, b: dict, confidence: float = 0.95) -> dict:
    """Accuracy per variant from tp/fp/tn/fn counts, B - A with a Wald interval, and a
    two-proportion z-test (pooled) p-value."""
    out: dict = {"variants": {}}
    stats = {}
    for name, c in (("A", a), ("B", b)):
        n = int(sum(c.get(k, 0) for k in ("tp", "fp", "tn", "fn")))
        correct = int(c.get("tp", 0) + c.get("tn", 0))
        acc = correct / n if n else math.nan
        stats[name] = (n, correct, acc)
        out["variants"][name] = {"predictions": n, "correct": correct, "accuracy": acc,
                                 **{k: int(c.get(k, 0)) for k in ("tp", "fp", "tn", "fn")}}
    (na, ca, pa), (nb, cb, pb) = stats["A"], stats["B"]
    if na and nb:
        diff = pb - pa
        z_crit = norm.ppf(0.5 + confidence / 2)
        se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
        pooled = (ca + cb) / (na + nb)
        se0 = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
        z = diff / se0 if se0 > 0 else 0.0
        out.update(difference=diff, ci=[diff - z_crit * se, diff + z_crit * se], confidence=confidence,
                   z=z, p_value=float(2 * norm.sf(abs(z))),
                   leader="B" if diff > 0 else "A" if diff < 0 else None)
    else:
        out.update(difference=math.nan, ci=[math.nan, math.nan], confidence=confidence, z=math.nan,
                   p_value=math.nan, leader=None)
    return out
