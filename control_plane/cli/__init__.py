"""The ``magistrate`` command, one module per command group.

- ``root``: the parser that registers every group, and ``main`` (one sentence on failure);
- ``support``: what the groups share (``CommandError``, settings and database checks, the
  tenant connections); it imports none of the groups, and nothing outside this package
  imports it (tests/test_layers.py);
- ``stack`` (``up``, ``web``, ``worker``, ``migrate``), ``users`` (``user``, ``member``),
  ``tenants`` (``tenant``, ``server``), ``keys``, ``audit``, ``backups`` (``backup``,
  ``restore``, ``drill``), ``redact``, ``reconcile``,
  ``signals``, ``doctor``: the groups."""

from control_plane.cli.root import build_parser, main

__all__ = ["build_parser", "main"]
