"""``byzantine-clients``: each attack is produced as described, checked on the reply that
leaves the real ClientApp (through the codec), and honest nodes are untouched."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import ConfigRecord

from flora_app.attacks import attacked_update, flipped_labels, is_attacker
from flora_app.client_app import app, train
from flora_app.config import ConfigError, FloraConfig
from flora_app.ml.lora import rank_block
from strategies.blocks import update_of
from strategies.choices import RANK_KEY
from strategies.codecs import decode_blob, get_codec
from strategies.wire import encode_content, make_header, record_to_blob, record_to_numpy
from tests.helpers import make_arrays, make_context, make_message, train_content


def _reply_update(
    run_config: dict, partition: int, rank: int | None = None
) -> tuple[OrderedDict, OrderedDict]:
    """(update the real app sends as an 'update' reply, the honest update) for ``partition``,
    asked for ``rank`` components (``rank-tiers``) when given."""
    plain = train_content(run_config)
    if rank is not None:
        plain["config"] = ConfigRecord({**plain["config"], RANK_KEY: rank})
    header = make_header("fp32", reply_codec="fp32", reply="update")
    encoded = encode_content(plain, get_codec("fp32"), header)
    reply = app(make_message(encoded), make_context(run_config, partition_id=partition))
    assert not reply.has_error()
    sent = decode_blob(record_to_blob(reply.content["arrays"]))
    honest_config = {**run_config, "byzantine-clients": 0}
    trained = record_to_numpy(
        train(make_message(plain), make_context(honest_config, partition_id=partition)).content[
            "arrays"
        ]
    )
    return sent, update_of(trained, record_to_numpy(plain["arrays"]))


def _norm(arrays: OrderedDict) -> float:
    return float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in arrays.values())))


def test_sign_flip_sends_the_negated_update_through_the_codec(tiny_run_config: dict) -> None:
    cfg = {**tiny_run_config, "byzantine-clients": 2, "attack": "sign-flip"}
    sent, honest = _reply_update(cfg, partition=1)
    assert _norm(honest) > 0
    for k in honest:
        np.testing.assert_allclose(sent[k], -honest[k], atol=1e-6)


def test_an_attacker_with_a_smaller_rank_flips_only_the_block_it_sends(
    tiny_run_config: dict,
) -> None:
    cfg = {**tiny_run_config, "byzantine-clients": 2, "attack": "sign-flip"}
    sent, honest = _reply_update(cfg, partition=1, rank=1)
    full = record_to_numpy(train_content(cfg)["arrays"])
    assert [v.shape for v in sent.values()] == [rank_block(k, v.shape, 1) for k, v in full.items()]
    assert any(sent[k].size < full[k].size for k in full)  # only the components it trained
    assert _norm(honest) > 0
    for k in honest:
        np.testing.assert_allclose(sent[k], -honest[k], atol=1e-6)


def test_scale_multiplies_the_update(tiny_run_config: dict) -> None:
    cfg = {**tiny_run_config, "byzantine-clients": 1, "attack": "scale", "attack-scale": 25.0}
    sent, honest = _reply_update(cfg, partition=0)
    for k in honest:
        np.testing.assert_allclose(sent[k], 25.0 * honest[k], rtol=1e-4, atol=1e-5)


def test_noise_has_the_norm_of_the_update_and_nothing_else_of_it(tiny_run_config: dict) -> None:
    cfg = {**tiny_run_config, "byzantine-clients": 1, "attack": "noise"}
    sent, honest = _reply_update(cfg, partition=0)
    assert _norm(sent) == pytest.approx(_norm(honest), rel=1e-4)
    flat_sent = np.concatenate([v.ravel() for v in sent.values()])
    flat_honest = np.concatenate([v.ravel() for v in honest.values()])
    cosine = flat_sent @ flat_honest / (np.linalg.norm(flat_sent) * np.linalg.norm(flat_honest))
    assert abs(cosine) < 0.1  # noise, not the update


def test_honest_partitions_send_their_own_update(tiny_run_config: dict) -> None:
    cfg = {**tiny_run_config, "byzantine-clients": 1, "attack": "sign-flip"}
    sent, honest = _reply_update(cfg, partition=2)
    for k in honest:
        np.testing.assert_allclose(sent[k], honest[k], atol=1e-6)


def test_label_flip_trains_on_flipped_labels_only_on_attackers(tiny_run_config: dict) -> None:
    plain = train_content(tiny_run_config)
    flipping = {**tiny_run_config, "byzantine-clients": 1, "attack": "label-flip"}
    honest = record_to_numpy(
        train(make_message(plain), make_context(tiny_run_config, partition_id=0)).content["arrays"]
    )
    flipped = record_to_numpy(
        train(make_message(plain), make_context(flipping, partition_id=0)).content["arrays"]
    )
    untouched = record_to_numpy(
        train(make_message(plain), make_context(flipping, partition_id=1)).content["arrays"]
    )
    other = record_to_numpy(
        train(make_message(plain), make_context(tiny_run_config, partition_id=1)).content["arrays"]
    )
    assert any(not np.array_equal(flipped[k], honest[k]) for k in honest)
    assert all(np.array_equal(untouched[k], other[k]) for k in other)
    assert flipped_labels(np.arange(10), 10).tolist() == list(range(9, -1, -1))


def test_the_attackers_are_the_first_partitions_and_bad_settings_are_refused() -> None:
    assert [p for p in range(6) if is_attacker(p, 2)] == [0, 1]
    assert not is_attacker(-1, 2)
    with pytest.raises(ConfigError, match="'attack'"):
        FloraConfig.from_run_config({"attack": "backdoor"})
    with pytest.raises(ConfigError, match="'attack-scale'"):
        FloraConfig.from_run_config({"attack-scale": 0.0})
    with pytest.raises(ValueError, match="label-flip"):
        attacked_update(make_arrays(0), "label-flip", 1.0, np.random.default_rng(0))
