"""``tiers``: heterogeneous devices, each asked for an uplink its link can carry.

``tiers = 'share:value,...'`` splits the nodes into tiers: a share of the nodes each, and the
uplink each tier sends (a top-k density under ``flasc``, a value width under ``flocora``). The
server decides which node is in which tier and asks each for its tier's codec; it validates every
reply against what it asked, so a node cannot upgrade itself by replying in another codec. A
deployed SuperNode may declare its tier in its node config (``tier = i``, an index into the list);
every other node gets one by a seeded rule over the partition ids: exactly round(share * N) of
the N known partitions per tier (largest remainders), drawn by a permutation of ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TIER_KEY = "tier"  # node-config key a deployed SuperNode declares its tier index with
SHARE_TOLERANCE = 1e-6


class TiersError(ValueError):
    """A ``tiers`` string that does not describe shares summing to 1 with a value each."""


def parse_tiers(text: str) -> tuple[tuple[float, float], ...]:
    """``'0.25:0.05,0.75:0.2'`` -> ((0.25, 0.05), (0.75, 0.2)); () for an empty string."""
    if not text.strip():
        return ()
    tiers = []
    for part in text.split(","):
        share, sep, value = part.partition(":")
        try:
            if not sep:
                raise ValueError
            tiers.append((float(share), float(value)))
        except ValueError:
            raise TiersError(f"tier {part.strip()!r}: expected share:value") from None
    shares = [s for s, _ in tiers]
    if any(not 0.0 < s <= 1.0 for s in shares):
        raise TiersError(f"shares {shares}: each must be in (0, 1]")
    if abs(sum(shares) - 1.0) > SHARE_TOLERANCE:
        raise TiersError(f"shares {shares} sum to {sum(shares):g}, expected 1")
    return tuple(tiers)


def tier_counts(shares: Sequence[float], n: int) -> list[int]:
    """How many of ``n`` nodes each tier gets: round(share * n) by largest remainders."""
    exact = np.asarray(shares, dtype=np.float64) * n
    counts = np.floor(exact).astype(int)
    left = n - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:left]] += 1
    return counts.tolist()


def assign_tiers(partitions: Sequence[int], shares: Sequence[float], seed: int) -> dict[int, int]:
    """Partition id -> tier index for the known ``partitions``: a seeded permutation of them,
    cut into consecutive runs of ``tier_counts``."""
    ordered = sorted(set(partitions))
    if not ordered or not shares:
        return {}
    perm = np.random.default_rng([seed, 0x7165]).permutation(len(ordered))
    tiers = np.repeat(np.arange(len(shares)), tier_counts(shares, len(ordered)))
    return {ordered[int(p)]: int(t) for p, t in zip(perm, tiers, strict=True)}


class NodeTiers:
    """Node id -> its tier's uplink value (density or bits), for the strategy to ask.

    ``nodes`` is the server's view of the nodes (``PartitionOrderedGrid``): their partition ids
    and any tier they declared. The assignment over partitions is made once, from the partitions
    known at the first question (in simulation, all of them); a partition that appears later
    draws its tier from the shares with its own seeded draw, so no node ever changes tier.
    """

    def __init__(self, tiers: Sequence[tuple[float, float]], seed: int, nodes: object) -> None:
        self.shares = [s for s, _ in tiers]
        self.values = [v for _, v in tiers]
        self.seed = seed
        self.nodes = nodes
        self._by_partition: dict[int, int] | None = None

    def tier_of(self, node: int) -> int | None:
        declared = self.nodes.declared_tier(node)  # type: ignore[attr-defined]
        if declared is not None and 0 <= declared < len(self.values):
            return declared
        partition = self.nodes.partition_of(node)  # type: ignore[attr-defined]
        if partition is None:
            return None
        if self._by_partition is None:
            known = self.nodes.known_partitions()  # type: ignore[attr-defined]
            self._by_partition = assign_tiers(known, self.shares, self.seed)
        if partition not in self._by_partition:
            u = np.random.default_rng([self.seed, 0x7165, partition]).random()
            edges = np.cumsum(self.shares)
            self._by_partition[partition] = int(
                min(np.searchsorted(edges, u, "right"), len(edges) - 1)
            )
        return self._by_partition[partition]

    def __call__(self, node: int) -> float | None:
        tier = self.tier_of(node)
        return None if tier is None else self.values[tier]
