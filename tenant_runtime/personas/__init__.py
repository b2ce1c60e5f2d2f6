"""Personas: which teams and sources a member may see; every scoped query filters on them."""
