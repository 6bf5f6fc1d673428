"""Connectors: the real-world implementations of detector's protocols (Kafka, Redis, files, servers)."""
