"""A link model for the benchmark report: what a run's rounds would take over real edge links.

Users decide with time, not bytes: a round lasts as long as its slowest sampled client takes to
download the broadcast, train, and upload its reply. From each round of ``rounds.jsonl`` (bytes
per direction, sampled clients, the clients' measured time on the message) and a named link
profile this module computes each round's simulated wall time:

    round = max over the round's clients i of
            rtt + down_bytes * 8 / down_bps_i + compute + rtt + up_bytes_i * 8 / up_bps_i

Each client's bandwidths are the profile's medians times a log-normal factor (``spread`` is its
sigma), drawn from a generator seeded by the profile, the run's seed and the round, so every
configuration of one seed meets the same links and their times compare pairwise. What it
leaves out, and says so in the report: the evaluate phase's traffic (as the MB columns do), the
server's own time, and differences in compute between clients (``compute`` is the round's mean
client time, measured on the benchmark machine, where clients shared two cores).

The profiles are the simulation's own (``strategies.links``: assumptions, not measurements).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from strategies.links import PROFILES, Link, LinkProfile

__all__ = ["PROFILES", "LinkProfile", "cumulative_seconds", "round_seconds"]


def _rng(profile: LinkProfile, seed: int, round_number: int) -> np.random.Generator:
    return np.random.default_rng([profile.key(), seed, round_number])


def round_seconds(record: Mapping[str, Any], profile: LinkProfile, seed: int) -> float:
    """Simulated wall seconds of one round (a ``rounds.jsonl`` record) over ``profile``."""
    clients = int(record.get("clients", 0))
    if clients <= 0:
        return 0.0
    replies = max(1, int(record.get("replies", clients)))
    down = float(record.get("bytes_down", 0.0)) / clients  # the broadcast, per client
    up = float(record.get("bytes_up", 0.0)) / replies  # a reply, on average
    compute = float(record.get("client_client_seconds", 0.0))
    factors = np.exp(
        _rng(profile, seed, int(record.get("round", 0))).normal(0.0, profile.spread, (2, clients))
    )
    # One Link of arrays: every client of the round at once, by the simulation's formula.
    links = Link(
        profile.down_mbps * 1e6 * factors[0], profile.up_mbps * 1e6 * factors[1], profile.rtt_s
    )
    return float(np.max(links.seconds(down, compute, up)))


def cumulative_seconds(
    rounds: Sequence[Mapping[str, Any]], profile: LinkProfile, seed: int
) -> np.ndarray:
    """Simulated wall seconds after each round."""
    return np.cumsum([round_seconds(r, profile, seed) for r in rounds])
