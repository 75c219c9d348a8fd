"""Choices the strategy wrappers act on, importable without any server-side code (the config,
which the ClientApp reads too, checks run-config values against them)."""

from __future__ import annotations

from strategies.links import PROFILES

# What happens to a reply whose update is longer than ``max_update_norm``
# (``strategies.compression``).
UPDATE_NORM_ACTIONS = ("clip", "reject")

# The ``min_update_cosine`` that turns the median-direction filter off
# (``strategies.direction_filter``): no cosine lies below -1.
NO_COSINE_BOUND = -1.0

# What the median-direction filter takes a reply's cosine over: the whole update as one vector,
# or each tensor alone, the reply's cosine then the median over its tensors (one tensor, such as
# a classifier head holding most of the norm, cannot decide it).
COSINE_SCOPES = ("global", "tensor")

# Where central DP clips updates (``strategies.privacy``): the server, on what it decodes; or
# the clients too, before encoding.
CLIPPING_SIDES = ("server", "client")

# The training-config key that carries the LoRA rank a node is asked to train
# (``strategies.rank_tiers``; the ClientApp reads it).
RANK_KEY = "lora-rank"

# link-profile's values (``strategies.links``): none (no simulated clock) or a profile's name.
LINK_PROFILES = ("none", *PROFILES)

# Node-config keys a deployed SuperNode declares its link with (Mbit/s each way); the server's
# simulated clock (``strategies.link_clock``) then uses them instead of a profile's draw.
DOWNLINK_MBPS_KEY = "downlink-mbps"
UPLINK_MBPS_KEY = "uplink-mbps"
