"""Domain core of skipcache: events, labels, the point-in-time feature engine, estimators,
artifacts and evaluation. Imports nothing else of the project, so training, the offline
simulation and the live worker all share exactly this code."""
