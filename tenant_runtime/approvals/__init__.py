"""Approval gates: action classes, approval requests and decisions (DESIGN.md, invariant 5)."""
