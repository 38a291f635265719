"""The live worker: a Faust app (``app.py``, thin wiring) whose agents hand whole fetched runs of
a partition's records (``transport.py``) to the worker's loop (``service.py``), which puts each
batch through the checkpoint (``checkpoint.py``: process -> sinks -> flush -> commit -> sensors)
of its stage's partition runtimes (``stages/``). Where a partition resumes is ``positions.py``;
``health.py``, ``metrics.py`` and ``web.py`` are what operators see. ``in_memory.py`` runs the
same parts without servers. Importing this package builds and connects nothing."""
