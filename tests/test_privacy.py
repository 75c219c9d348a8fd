"""Central DP: every decoded update is clipped, the uniform mean gets noise of the configured
scale, ε is what dp-accounting computes for the rounds run, and bad settings are refused."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

from flora_app.config import ConfigError, FloraConfig
from flora_app.results import read_rounds
from flora_app.server_app import run
from strategies import FLASC, FedLoRA
from strategies.chain import take_round_metrics
from strategies.wire import numpy_to_record, record_to_numpy
from tests.helpers import LocalGrid, make_reply


class _Nodes:
    """Enough of a Grid for sampling: ``n`` nodes."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.n + 1))


def _configure(strategy, dense: OrderedDict, grid, server_round: int = 1) -> list[int]:  # type: ignore[no-untyped-def]
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    messages = strategy.configure_train(
        server_round, numpy_to_record(dense), ConfigRecord({}), grid
    )
    return [m.metadata.dst_node_id for m in messages]


def _flat(arrays: dict) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in arrays.values()])


def _big(seed: int, scale: float = 1.0) -> OrderedDict:
    rng = np.random.default_rng(seed)
    return OrderedDict(w=(rng.normal(size=(100, 200)) * scale).astype(np.float32))


def test_the_noise_on_the_mean_has_the_configured_scale() -> None:
    """Four identical short replies: what comes back minus their mean is the noise; its
    standard deviation over 20,000 entries is z * C / m within 3 %."""
    np.random.seed(0)
    z, clip, m = 1.5, 2.0, 4
    strategy = FedLoRA(
        dp_noise_multiplier=z, dp_clipping_norm=clip, fraction_train=1.0, min_available_nodes=1
    )
    dense = _big(0)
    nodes = _configure(strategy, dense, _Nodes(m))
    reply = OrderedDict(w=dense["w"] + np.float32(1e-4))
    got = record_to_numpy(
        strategy.aggregate_train(1, [make_reply(reply, 10, n, "fp32") for n in nodes])[0]
    )
    noise = _flat(got) - _flat(reply)
    assert abs(noise.mean()) < 0.05 * z * clip / m
    assert noise.std() == pytest.approx(z * clip / m, rel=0.03)


def test_every_reply_weighs_the_same_and_is_clipped_after_decoding() -> None:
    """Two replies, 1 and 99 examples, one far too long: the result is the plain mean of the
    first and the second clipped onto the bound (noise made negligible)."""
    strategy = FedLoRA(
        dp_noise_multiplier=1e-9, dp_clipping_norm=1.0, fraction_train=1.0, min_available_nodes=1
    )
    dense = _big(0)
    a, b = _configure(strategy, dense, _Nodes(2))
    short = OrderedDict(w=dense["w"] + np.float32(1e-5))
    long_update = _big(1, 0.1)["w"]
    long = OrderedDict(w=dense["w"] + long_update)
    replies = [make_reply(short, 1, a, "fp32"), make_reply(long, 99, b, "fp32")]
    got = record_to_numpy(strategy.aggregate_train(1, replies)[0])["w"]
    clipped = dense["w"] + long_update.astype(np.float64) / np.linalg.norm(long_update)
    np.testing.assert_allclose(got, (short["w"] + clipped) / 2, rtol=1e-5, atol=1e-5)
    assert take_round_metrics(strategy)["clipped_replies"] == 1


def test_flasc_steps_on_the_noisy_mean_of_clipped_sparse_updates() -> None:
    strategy = FLASC(
        density_up=0.2,
        density_down=1.0,
        server_optimizer="sgd",
        server_lr=1.0,
        dp_noise_multiplier=1e-9,
        dp_clipping_norm=0.5,
        fraction_train=1.0,
        min_available_nodes=1,
        min_train_nodes=1,
    )
    dense = _big(0)
    (node,) = _configure(strategy, dense, _Nodes(1))
    update = _big(3, 0.05)
    got = record_to_numpy(
        strategy.aggregate_train(1, [make_reply(update, 5, node, strategy.uplink, "update")])[0]
    )
    step = _flat(got) - _flat(dense)
    assert np.linalg.norm(step) == pytest.approx(0.5, rel=1e-4)  # the long sparse update, clipped
    assert np.count_nonzero(np.abs(step) > 1e-6) == round(0.2 * step.size)


def test_epsilon_is_what_dp_accounting_says_for_the_rounds_run() -> None:
    import dp_accounting
    from dp_accounting import rdp

    z, n, k = 1.1, 10, 3
    strategy = FedLoRA(
        dp_noise_multiplier=z, dp_clipping_norm=1.0, fraction_train=0.3, min_available_nodes=1
    )
    dense = _big(0)
    seen = []
    for server_round in (1, 2, 3):
        nodes = _configure(strategy, dense, _Nodes(n), server_round)
        assert len(nodes) == k
        strategy.aggregate_train(
            server_round, [make_reply(dense, 5, node, "fp32") for node in nodes]
        )
        seen.append(take_round_metrics(strategy)["dp_epsilon"])
    direct = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(n, k, dp_accounting.GaussianDpEvent(z))
    expected = []
    for _ in range(3):
        direct.compose(event)
        expected.append(direct.get_epsilon(1e-5))
    assert seen == pytest.approx(expected, rel=1e-9)
    assert seen[0] < seen[1] < seen[2]


class _Growing(_Nodes):
    """A grid where a node joins every time it is listed (nodes come and go under Flower)."""

    def get_node_ids(self) -> list[int]:
        self.n += 1
        return super().get_node_ids()


def test_the_accounted_population_is_the_one_the_sample_was_drawn_from() -> None:
    strategy = FedLoRA(
        dp_noise_multiplier=1.0, dp_clipping_norm=1.0, fraction_train=0.5, min_available_nodes=1
    )
    dense = _big(0)
    grid = _Growing(9)
    nodes = _configure(strategy, dense, grid)
    drawn_from = strategy.strategy.strategy.population["train"]  # NodeSampling's own count
    strategy.aggregate_train(1, [make_reply(dense, 5, node, "fp32") for node in nodes])
    metrics = take_round_metrics(strategy)
    assert (metrics["dp_population"], metrics["dp_sample"]) == (drawn_from, len(nodes))
    assert len(nodes) == drawn_from // 2


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"aggregation": "median"}, "'aggregation'"),
        ({"over-selection": 0.5}, "'over-selection'"),
        ({"max-update-norm": 2.0}, "'max-update-norm'"),
        ({"min-update-cosine": 0.0}, "'min-update-cosine'"),
    ],
)
def test_dp_with_what_it_cannot_compose_with_is_one_line(extra: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as caught:
        FloraConfig.from_run_config({"dp-noise-multiplier": 1.0, **extra})
    assert "\n" not in str(caught.value)
    for bad in ({"dp-noise-multiplier": -1.0}, {"dp-clipping-norm": 0.0}, {"dp-delta": 1.0}):
        with pytest.raises(ConfigError, match=f"'{next(iter(bad))}'"):
            FloraConfig.from_run_config(bad)


@pytest.mark.parametrize("clipping", ["server", "client"])
def test_a_private_flasc_run_reports_epsilon(
    tmp_path: Path, tiny_run_config: dict, clipping: str
) -> None:
    cfg = {
        **tiny_run_config,
        "strategy": "flasc",
        "dp-noise-multiplier": 1.0,
        "dp-clipping-norm": 0.5,
        "dp-clipping": clipping,
        "num-server-rounds": 2,
        "fraction-train": 0.5,
        "fraction-evaluate": 0.5,
        "output-dir": str(tmp_path),
        "run-name": "dp",
    }
    summary = run(LocalGrid(cfg, 4), FloraConfig.from_run_config(cfg))
    rounds = read_rounds(tmp_path / "dp")
    assert [(r["rejected_replies"], r["failed_replies"]) for r in rounds] == [(0, 0), (0, 0)]
    assert [(r["dp_population"], r["dp_sample"]) for r in rounds] == [(4, 2), (4, 2)]
    assert 0 < rounds[0]["dp_epsilon"] < rounds[1]["dp_epsilon"] == summary["dp_epsilon"]
    assert summary["dp_delta"] == 1e-5


def test_client_side_clipping_clips_the_update_before_the_codec(tiny_run_config: dict) -> None:
    """The real ClientApp, a train message whose config carries Flower's clipping key: the
    update it sends (fp32 codec, 'update' replies) has the clipping norm."""
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    from flora_app.client_app import app
    from strategies.codecs import decode_blob, get_codec
    from strategies.wire import encode_content, make_header, record_to_blob
    from tests.helpers import make_context, make_message, train_content

    plain = train_content(tiny_run_config)
    plain["config"] = ConfigRecord({**plain["config"], KEY_CLIPPING_NORM: 1e-3})
    header = make_header("fp32", reply_codec="fp32", reply="update")
    reply = app(
        make_message(encode_content(plain, get_codec("fp32"), header)),
        make_context(tiny_run_config),
    )
    assert not reply.has_error(), reply.error
    sent = decode_blob(record_to_blob(reply.content["arrays"]))
    assert np.linalg.norm(_flat(sent)) == pytest.approx(1e-3, rel=1e-3)
