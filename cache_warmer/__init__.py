"""Storage tiers, promotion and eviction, costs, policies and the offline simulation.

Imports models/ only. The same Pipeline drives the simulation and the live worker."""
