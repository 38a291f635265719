"""The Kafka and Redis clients' own error logs, summarised: a 10 s broker outage made aiokafka log
~1,500 ERROR lines around the worker's one "Kafka is unreachable", burying it. The worker already
says when a dependency goes and when it comes back (``service.py``); in between, the clients'
warnings and errors are counted, not printed, and the count is given with the "answers" line (or
once a minute). While the dependency is up, a few client lines a minute still go through: they
can be the first sign of trouble, or a problem of their own."""
from __future__ import annotations

import logging
import time
from collections import Counter

from stream.worker.health import Dependency

CLIENT_LOGGERS = ("aiokafka", "kafka", "redis")
BUDGET = 3
"""Client warnings and errors printed per ``WINDOW`` seconds while their dependency is up."""
WINDOW = 60.0


class ClientNoise(logging.Filter):
    def __init__(self, dependency: Dependency, budget: int = BUDGET, window: float = WINDOW):
        super().__init__()
        self.dependency = dependency
        self.budget, self.window = budget, window
        self.suppressed: Counter[str] = Counter()
        self._printed: list[float] = []
        self._since = time.monotonic()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        if self.dependency.up:
            printed = self._printed = [t for t in self._printed if now - t < self.window]
            if len(printed) < self.budget:
                printed.append(now)
                return True
        self.suppressed[str(record.msg)[:60]] += 1
        return False

    def take(self) -> str:
        """The suppressed lines since the last call, summarised ('' if none), and forget them."""
        if not self.suppressed:
            return ""
        n = sum(self.suppressed.values())
        common, count = self.suppressed.most_common(1)[0]
        self.suppressed.clear()
        return f"{n:,} client warnings and errors suppressed (most often {count:,}x {common!r})"


def install(noise: ClientNoise, prefixes: tuple[str, ...] = CLIENT_LOGGERS) -> None:
    """Filter every logger (existing now) of the clients: a logger's filters see only its own records."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in prefixes]
    for name in {*prefixes, *names}:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, ClientNoise) and f.dependency.name == noise.dependency.name]:
            logger.removeFilter(old)  # an earlier app's, in the same process (tests)
        logger.addFilter(noise)
