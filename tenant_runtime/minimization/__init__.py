"""Data minimization: the consent switch and per-source grants' settings, observations capped by
the database itself, k-anonymous team aggregates and retention of what extractors learn."""
