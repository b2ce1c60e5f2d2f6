"""Observations: what extractors learn from a source about a task or team (to be written)."""
