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

The profiles are assumptions, not measurements; their numbers are typical medians:
``lte`` 20 Mbit/s down, 5 up, 50 ms round trip (mobile broadband, good coverage); ``3g``
2 / 0.5 Mbit/s, 200 ms (rural or congested cells, IoT gateways); both with sigma 0.7 between
clients (a factor of 2 either way covers about two thirds of them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LinkProfile:
    """Median bandwidths (Mbit/s), round-trip latency (s) and the spread between clients."""

    name: str
    down_mbps: float
    up_mbps: float
    rtt_s: float
    spread: float = 0.7

    def __post_init__(self) -> None:
        if min(self.down_mbps, self.up_mbps) <= 0 or self.rtt_s < 0 or self.spread < 0:
            raise ValueError(f"link profile {self.name!r}: bandwidths > 0, rtt and spread >= 0")


PROFILES: dict[str, LinkProfile] = {
    "lte": LinkProfile("lte", down_mbps=20.0, up_mbps=5.0, rtt_s=0.05),
    "3g": LinkProfile("3g", down_mbps=2.0, up_mbps=0.5, rtt_s=0.2),
}


def _rng(profile: LinkProfile, seed: int, round_number: int) -> np.random.Generator:
    key = int.from_bytes(hashlib.sha256(profile.name.encode()).digest()[:8], "little")
    return np.random.default_rng([key, seed, round_number])


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
    down_bps = profile.down_mbps * 1e6 * factors[0]
    up_bps = profile.up_mbps * 1e6 * factors[1]
    per_client = 2 * profile.rtt_s + 8 * down / down_bps + compute + 8 * up / up_bps
    return float(per_client.max())


def cumulative_seconds(
    rounds: Sequence[Mapping[str, Any]], profile: LinkProfile, seed: int
) -> np.ndarray:
    """Simulated wall seconds after each round."""
    return np.cumsum([round_seconds(r, profile, seed) for r in rounds])
