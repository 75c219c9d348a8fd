"""The benchmark report's link model: a round's simulated time over edge links."""

from __future__ import annotations

import numpy as np
import pytest

from flora_tools.link_model import PROFILES, LinkProfile, cumulative_seconds, round_seconds

ROUND = {
    "round": 3,
    "clients": 4,
    "replies": 4,
    "bytes_down": 4 * 1_000_000,
    "bytes_up": 4 * 250_000,
    "client_client_seconds": 2.0,
}


def test_without_spread_a_round_is_the_formula_by_hand() -> None:
    flat = LinkProfile("flat", down_mbps=8.0, up_mbps=2.0, rtt_s=0.1, spread=0.0)
    # 2 x 0.1 s + 1 MB at 8 Mbit/s (1 s) + 2 s of compute + 0.25 MB at 2 Mbit/s (1 s)
    assert round_seconds(ROUND, flat, seed=0) == pytest.approx(0.2 + 1.0 + 2.0 + 1.0)


def test_the_slowest_client_sets_the_round_and_draws_repeat_by_seed() -> None:
    lte = PROFILES["lte"]
    once = round_seconds(ROUND, lte, seed=7)
    assert round_seconds(ROUND, lte, seed=7) == once  # the same links for every config
    assert round_seconds(ROUND, lte, seed=8) != once
    median = LinkProfile("median", lte.down_mbps, lte.up_mbps, lte.rtt_s, spread=0.0)
    # with 4 clients drawn around the median, the slowest is slower than the median client
    slower = [round_seconds({**ROUND, "round": r}, lte, 0) for r in range(50)]
    assert np.median(slower) > round_seconds(ROUND, median, 0)


def test_fewer_bytes_never_take_longer_and_time_accumulates() -> None:
    g3 = PROFILES["3g"]
    small = {**ROUND, "bytes_down": ROUND["bytes_down"] // 10, "bytes_up": ROUND["bytes_up"] // 10}
    assert round_seconds(small, g3, 1) < round_seconds(ROUND, g3, 1)
    rounds = [{**ROUND, "round": r} for r in range(1, 4)]
    total = cumulative_seconds(rounds, g3, 1)
    assert total.shape == (3,) and np.all(np.diff(total) > 0)
    assert round_seconds({**ROUND, "clients": 0}, g3, 1) == 0.0


def test_a_profile_refuses_impossible_links() -> None:
    with pytest.raises(ValueError, match="bandwidths > 0"):
        LinkProfile("broken", down_mbps=0.0, up_mbps=1.0, rtt_s=0.0)
