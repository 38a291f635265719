"""A real `skipcache worker` with one bug put into its code, as a release could ship one: the
tests see what the worker does about a fault no check foresaw. SKIPCACHE_TEST_FAULT:

- ``play_user=N``: the warmer raises on a play of user N (a value nobody checked for);
- ``decode``: the predict stage's decoder raises on every run (its agent crashes each time);
- ``moved_at=N``: once, the first predict batch of a partition past offset N finds Redis's offset
  not its own (as after a failover or another worker's commit), 50 ms into its read."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, as `python -m stream.cli` from it
fault = os.environ.get("SKIPCACHE_TEST_FAULT", "")
if fault.startswith("play_user="):
    from cache_warmer.warmer import CacheWarmer

    poisoned_user, on_play = int(fault.split("=", 1)[1]), CacheWarmer.on_play

    def fragile_on_play(self, user_id, *args, **kwargs):
        if user_id == poisoned_user:
            raise KeyError(f"no record for user {user_id}")
        return on_play(self, user_id, *args, **kwargs)

    CacheWarmer.on_play = fragile_on_play
elif fault == "decode":
    from stream.worker.stages.predict import PredictRuntime

    def broken_decode(self, records):
        raise RuntimeError("decoder bug")

    PredictRuntime.decode = broken_decode
elif fault.startswith("moved_at="):
    import time

    from stream.store import StateMoved
    from stream.worker.stages.predict import PredictRuntime

    moved_at, prefetch, fired = int(fault.split("=", 1)[1]), PredictRuntime._prefetch, []

    def moved_prefetch(self, events, epoch):
        prefetch(self, events, epoch)
        if not fired and self.next_offset >= moved_at:
            fired.append(self.partition)
            time.sleep(0.05)
            raise StateMoved(self.stage, self.partition, self.next_offset, self.next_offset + 1)

    PredictRuntime._prefetch = moved_prefetch
elif fault:
    sys.exit(f"unknown SKIPCACHE_TEST_FAULT {fault!r}")

from stream.cli import main  # noqa: E402

sys.exit(main(["worker"]))
