"""Flower's floor: a trivial torch app (see pyproject.toml)."""
