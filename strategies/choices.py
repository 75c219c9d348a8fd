"""Choices the strategy wrappers act on, importable without any server-side code (the config,
which the ClientApp reads too, checks run-config values against them)."""

from __future__ import annotations

# What happens to a reply whose update is longer than ``max_update_norm``
# (``strategies.compression``).
UPDATE_NORM_ACTIONS = ("clip", "reject")

# Where central DP clips updates (``strategies.privacy``): the server, on what it decodes; or
# the clients too, before encoding.
CLIPPING_SIDES = ("server", "client")
