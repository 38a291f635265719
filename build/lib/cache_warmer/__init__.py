"""Storage tiers, promotion and eviction, costs, policies and the offline simulation.

Imports models/ only. The same predictor and warmer drive the simulation and the live worker."""
