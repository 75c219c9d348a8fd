"""``tiers``: nodes in tiers ask for their own uplink; the split is exact and seeded, the
values are checked against the strategy, and a real in-process run uses every tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from flora_app.config import ConfigError, FloraConfig
from flora_app.results import read_rounds
from flora_app.server_app import run
from flora_app.tiers import TiersError, assign_tiers, parse_tiers, tier_counts
from tests.helpers import LocalGrid


def test_parse_and_count() -> None:
    assert parse_tiers("") == ()
    assert parse_tiers("0.25:0.05, 0.75:0.2") == ((0.25, 0.05), (0.75, 0.2))
    for bad, why in [
        ("0.5:0.1,0.4:1", "sum to 0.9"),
        ("0.5", "expected share:value"),
        ("0:0.1,1:0.2", "each must be in"),
        ("a:b", "expected share:value"),
    ]:
        with pytest.raises(TiersError, match=why):
            parse_tiers(bad)
    assert tier_counts([0.25, 0.5, 0.25], 10) == [3, 5, 2]  # 2.5, 5, 2.5: one remainder left
    assert tier_counts([1 / 3] * 3, 100) == [34, 33, 33]


def test_assignment_is_exact_seeded_and_covers_every_partition() -> None:
    shares = [0.3, 0.7]
    a = assign_tiers(range(20), shares, seed=1)
    assert sorted(a) == list(range(20))
    assert sum(t == 0 for t in a.values()) == 6 and sum(t == 1 for t in a.values()) == 14
    assert assign_tiers(reversed(range(20)), shares, seed=1) == a  # order of discovery: no
    assert assign_tiers(range(20), shares, seed=2) != a


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"strategy": "flasc", "tiers": "0.5:0.1,0.5:1.5"}, "values [1.5] under flasc"),
        ({"strategy": "flocora", "tiers": "0.5:4,0.5:9"}, "values [9.0] under flocora"),
        ({"strategy": "fedlora", "tiers": "1:0.1"}, "with strategy = 'fedlora'"),
        ({"strategy": "flasc", "tiers": "0.5:0.1"}, "sum to 0.5"),
    ],
)
def test_bad_tiers_are_one_line_config_errors(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="'tiers'") as caught:
        FloraConfig.from_run_config(config)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_flasc_run_asks_each_tier_for_its_density(tmp_path: Path, tiny_run_config: dict) -> None:
    """Four real ClientApps in-process, two tiers of two: densities 0.05 and 1.0, so the mean
    realised uplink density is their mean, every round, and no reply is rejected. One node
    declares tier 0 in its node config, which the server follows."""
    cfg = {
        **tiny_run_config,
        "strategy": "flasc",
        "tiers": "0.5:0.05,0.5:1.0",
        "num-server-rounds": 2,
        "fraction-train": 1.0,
        "fraction-evaluate": 0.5,
        "output-dir": str(tmp_path),
        "run-name": "tiers",
    }
    grid = LocalGrid(cfg, 4)
    dense_by_rule = [p for p, t in assign_tiers(range(4), [0.5, 0.5], 0).items() if t == 1]
    declared = grid.node_ids[dense_by_rule[0]]
    grid.contexts[declared].node_config["tier"] = 0  # this device says it is a slow one
    run(grid, FloraConfig.from_run_config(cfg))
    rounds = read_rounds(tmp_path / "tiers")
    for r in rounds:
        assert r["rejected_replies"] == 0 and r["replies"] == 4
        # three nodes at 0.05 (two by the rule, one declared), one at 1.0
        assert r["up_density"] == pytest.approx((3 * 0.05 + 1.0) / 4, abs=2e-3)
