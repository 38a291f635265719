"""I/O and wiring: files, Kafka, Redis, HTTP and the command line. May import models and cache_warmer."""
