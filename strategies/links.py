"""Edge links for the simulated clock: named profiles and each node's own link.

Users deploy to devices on slow links; what decides between strategies there is time, not
bytes. A profile names typical medians (assumptions, not measurements) and the spread between
devices: each node's bandwidths are the medians times a log-normal factor (``spread`` is its
sigma), drawn once per node from the run's seed and the node's partition, so a device keeps
its link for the whole run and every configuration of one seed meets the same devices.

``lte``: 20 Mbit/s down, 5 up, 50 ms round trip (mobile broadband, good coverage); ``3g``:
2 / 0.5 Mbit/s, 200 ms (rural or congested cells, IoT gateways); both with sigma 0.7 (a
factor of 2 either way covers about two thirds of the devices).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

# The metric a reply carries once the clock has timed it: seconds from the round's start to
# its arrival at the server (``strategies.link_clock``); over-selection keeps the first.
ARRIVAL_KEY = "sim-arrival-seconds"


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

    def key(self) -> int:
        """A number naming the profile, for seeding its draws."""
        return int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:8], "little")


PROFILES: dict[str, LinkProfile] = {
    "lte": LinkProfile("lte", down_mbps=20.0, up_mbps=5.0, rtt_s=0.05),
    "3g": LinkProfile("3g", down_mbps=2.0, up_mbps=0.5, rtt_s=0.2),
}


@dataclass(frozen=True)
class Link:
    """One device's link: bits per second each way and the round trip. Arrays of bandwidths
    time many devices at once (the report's replay, ``flora_tools.link_model``)."""

    down_bps: float
    up_bps: float
    rtt_s: float

    def seconds(self, down_bytes: float, compute_s: float, up_bytes: float) -> float:
        """From the round's start to the reply's arrival: request, download, local work,
        upload (one round trip each way)."""
        return (
            2 * self.rtt_s + 8 * down_bytes / self.down_bps + compute_s + 8 * up_bytes / self.up_bps
        )


def node_link(profile: LinkProfile, seed: int, partition: int) -> Link:
    """The link of the device holding ``partition``, the same in every round of the run."""
    factors = np.exp(
        np.random.default_rng([profile.key(), seed, partition]).normal(0.0, profile.spread, 2)
    )
    return Link(
        profile.down_mbps * 1e6 * float(factors[0]),
        profile.up_mbps * 1e6 * float(factors[1]),
        profile.rtt_s,
    )
