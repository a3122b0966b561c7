"""Hunting: what ties flow events to the intel domains (the flow→IoC bridge and the ingest pipeline)."""
