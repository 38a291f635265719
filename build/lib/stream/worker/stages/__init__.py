"""The two stages' partition runtimes: what both share (``partition.py``), predict keyed by user
(``predict.py``), warm keyed by track (``warm.py``), and the entries between them
(``entry_codec.py``)."""
