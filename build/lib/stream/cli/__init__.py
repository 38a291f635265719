"""The command line: ``main`` parses and dispatches (``main.py``), use cases live in ``jobs.py``,
renderers in ``reports.py``; ``embedded.py`` is `skipcache up`'s local stack, ``services.py``
starts the servers it and the tests need, ``dashboard.py`` writes the Grafana dashboard."""
from stream.cli.main import main

__all__ = ["main"]
