"""The simulated clock (``link-profile``): each reply timed over its node's link, over-selection
keeping the first arrivals, and each round's simulated seconds in ``rounds.jsonl``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg

from flora_app.config import FloraConfig
from flora_app.results import read_rounds
from flora_app.server_app import run
from strategies import NodeSampling
from strategies.chain import take_round_metrics
from strategies.compression import CompressionStrategy
from strategies.link_clock import LinkClock
from strategies.links import PROFILES, Link, node_link
from strategies.wire import record_to_numpy
from tests.helpers import LocalGrid, make_arrays, make_content, make_message
from tests.test_node_sampling import _configure

PLAIN = "fp32"  # lossless, so the aggregate can be checked exactly


def _clocked(links: dict[int, Link], sizes: dict[int, tuple[int, int]]) -> CompressionStrategy:
    inner = FedAvg(fraction_train=0.3, min_available_nodes=1, min_train_nodes=1)
    sampling = NodeSampling(inner, seed=0, over_selection=1.0)  # target 3 of 10, sample 6
    clock = LinkClock(sampling, link_of=links.get, bytes_of=lambda n: sizes.get(n, (0, 0)))
    return CompressionStrategy(clock, "fp32", PLAIN)


def test_a_link_times_request_download_work_and_upload() -> None:
    link = Link(down_bps=8e6, up_bps=1e6, rtt_s=0.1)
    # 0.2 s of round trips, 1 MB down at 1 MB/s, 3 s of work, 0.25 MB up at 0.125 MB/s
    assert link.seconds(1_000_000, 3.0, 250_000) == pytest.approx(0.2 + 1.0 + 3.0 + 2.0)


def test_a_node_keeps_its_link_and_the_profiles_spread_them() -> None:
    lte = PROFILES["lte"]
    assert node_link(lte, 0, 5) == node_link(lte, 0, 5)  # the same device all run
    downs = np.array([node_link(lte, 0, p).down_bps for p in range(400)])
    assert np.median(downs) == pytest.approx(lte.down_mbps * 1e6, rel=0.15)
    assert 1.5 < np.percentile(downs, 84) / np.median(downs) < 2.5  # sigma 0.7: about 2x
    assert node_link(lte, 1, 5) != node_link(lte, 0, 5)


def test_over_selection_keeps_the_first_simulated_arrivals_not_the_first_sampled() -> None:
    probe = _clocked({}, {})
    order = _configure(probe, make_arrays(0))
    # the later a node was sampled, the faster its link: arrival order is sampling order reversed
    links = {n: Link(1e6 * (i + 1), 1e6 * (i + 1), 0.0) for i, n in enumerate(order)}
    sizes = dict.fromkeys(order, (125_000, 125_000))  # 1 Mbit each way
    strategy = _clocked(links, sizes)
    assert _configure(strategy, make_arrays(0)) == order
    updates = {n: make_arrays(n) for n in order}
    replies = [
        make_message(
            make_content(updates[n], {"num-examples": 10, "client-seconds": 1.0}, PLAIN), src=n
        )
        for n in order
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    fastest = order[-3:]
    want = {k: np.mean([updates[n][k] for n in fastest], axis=0) for k in updates[order[0]]}
    got = record_to_numpy(arrays)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)
    metrics = take_round_metrics(strategy)
    assert metrics["spare_replies"] == 3
    # the round ends when the last kept reply arrives: 2 Mbit over the 4th fastest link, + 1 s
    assert metrics["sim_round_seconds"] == pytest.approx(1.0 + 2.0 / 4)


def test_a_clocked_run_is_the_same_run_for_the_same_seed(
    tmp_path: Path, tiny_run_config: dict
) -> None:
    """Which replies over-selection keeps follows bytes and links, never this machine's
    load: two runs of one seed agree on everything but timing."""
    runs = []
    for name in ("a", "b"):
        cfg = FloraConfig.from_run_config(
            {
                **tiny_run_config,
                "strategy": "flocora",
                "num-server-rounds": 1,
                "fraction-train": 0.5,
                "over-selection": 0.5,
                "link-profile": "3g",
                "output-dir": str(tmp_path),
                "run-name": name,
            }
        )
        run(LocalGrid(cfg.to_run_config(), 4), cfg)
        runs.append(read_rounds(tmp_path / name))
    for r in runs[0]:
        assert r["spare_replies"] == 1 and r["aggregated_replies"] == 2
        assert r["sim_round_seconds"] > 2 * PROFILES["3g"].rtt_s  # a request and a reply
    untimed = [
        [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rounds]
        for rounds in runs
    ]
    assert untimed[0] == untimed[1]


def test_a_device_that_declares_its_link_is_timed_over_it(
    tmp_path: Path, tiny_run_config: dict
) -> None:
    """A deployed SuperNode may declare its link in its node config (downlink-mbps,
    uplink-mbps); the clock uses that instead of the profile's draw. Every node is sampled
    (4 for a target of 2) and three declare 1 kbit/s each way: the round keeps the one node on
    a drawn LTE link and must wait for one of the slow three."""
    cfg = FloraConfig.from_run_config(
        {
            **tiny_run_config,
            "strategy": "flocora",
            "num-server-rounds": 1,
            "fraction-train": 0.5,
            "over-selection": 1.0,
            "link-profile": "lte",
            "output-dir": str(tmp_path),
            "run-name": "declared",
        }
    )
    grid = LocalGrid(cfg.to_run_config(), 4)
    for node in grid.node_ids[1:]:
        grid.contexts[node].node_config.update({"downlink-mbps": 0.001, "uplink-mbps": 0.001})
    run(grid, cfg)
    (record,) = read_rounds(tmp_path / "declared")
    assert record["clients"] == 4
    assert record["spare_replies"] == 2 and record["aggregated_replies"] == 2
    # a few kB each way at 1,000 bit/s: tens of seconds, where LTE links take a fraction of one
    assert record["sim_round_seconds"] > 20.0, record
