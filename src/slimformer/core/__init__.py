"""Exact, method-free transforms of a model (fusion, rotation, deletion, plans)."""
