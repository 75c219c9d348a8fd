"""The ClientApp's handlers, called with hand-built Flower messages and contexts."""

from __future__ import annotations

import numpy as np
import pytest

from flora_app.client_app import BaseModelMismatchError, app, evaluate, train
from flora_app.task import NodeConfigError
from strategies.codecs import codec_spec, decode_blob, get_codec
from strategies.mod import RESIDUAL_KEY
from strategies.wire import (
    HEADER_KEY,
    encode_content,
    make_header,
    record_to_blob,
    record_to_numpy,
)
from tests.helpers import make_context, make_message, train_content


def test_train_returns_trained_adapters_with_the_same_names_and_example_count(tiny_run_config):
    content = train_content(tiny_run_config)
    sent = record_to_numpy(content["arrays"])
    reply = train(make_message(content), make_context(tiny_run_config))
    got = record_to_numpy(reply.content["arrays"])
    assert list(got) == list(sent)
    assert all(got[k].shape == sent[k].shape for k in sent)
    assert any(not np.array_equal(got[k], sent[k]) for k in sent if "lora_B" in k)
    n = reply.content["metrics"]["num-examples"]
    assert isinstance(n, int) and n > 0
    assert reply.metadata.reply_to_message_id == "m"


def test_train_is_reproducible_for_the_same_round_and_node(tiny_run_config) -> None:
    replies = [
        record_to_numpy(
            train(
                make_message(train_content(tiny_run_config)), make_context(tiny_run_config)
            ).content["arrays"]
        )
        for _ in range(2)
    ]
    for k in replies[0]:
        np.testing.assert_array_equal(replies[0][k], replies[1][k])


def test_a_client_with_a_different_base_refuses_to_train(tiny_run_config) -> None:
    content = train_content(tiny_run_config, fingerprint="0123456789abcdef")
    with pytest.raises(BaseModelMismatchError, match="0123456789abcdef"):
        train(make_message(content), make_context(tiny_run_config))


def test_a_supernode_without_partition_config_fails_clearly(tiny_run_config) -> None:
    context = make_context(tiny_run_config)
    context.node_config = {}
    with pytest.raises(NodeConfigError, match="partition-id"):
        train(make_message(train_content(tiny_run_config)), context)


def test_evaluate_scores_the_validation_split(tiny_run_config) -> None:
    content = train_content(tiny_run_config)
    del content["config"]["lr"]
    reply = evaluate(make_message(content, "evaluate"), make_context(tiny_run_config))
    metrics = reply.content["metrics"]
    assert 0.0 <= metrics["val-accuracy"] <= 1.0 and metrics["num-examples"] > 0
    # No adapters travel back, only the BatchNorm moments of the received model (small).
    assert list(reply.content.array_records) == ["bn-stats"]
    stats = record_to_numpy(reply.content["bn-stats"])
    assert stats and all(k.endswith(("running_mean", "running_var")) for k in stats)
    assert metrics["bn-examples"] > 0


def _through_app(run_config: dict, context, codec: str, mode: str, feedback: bool):
    plain = train_content(run_config)
    header = make_header("fp32", reply_codec=codec, reply=mode, error_feedback=feedback)
    encoded = encode_content(plain, get_codec("fp32"), header)
    reply = app(make_message(encoded), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else None
    return plain, reply


def test_the_app_decodes_and_encodes_through_the_compression_mod(tiny_run_config) -> None:
    context = make_context(tiny_run_config)
    plain, reply = _through_app(tiny_run_config, context, "fp32", "weights", False)
    assert reply.content[HEADER_KEY]["codec"] == "fp32"
    got = decode_blob(record_to_blob(reply.content["arrays"]))
    assert list(got) == list(record_to_numpy(plain["arrays"]))
    assert reply.content["metrics"]["codec-seconds"] >= 0


def test_update_replies_with_error_feedback_keep_the_residual_in_context_state(
    tiny_run_config,
) -> None:
    q2 = codec_spec(2)
    context = make_context(tiny_run_config)
    plain, reply = _through_app(tiny_run_config, context, q2, "update", True)
    sent_update = decode_blob(record_to_blob(reply.content["arrays"]))
    # the plain handler's trained weights, for comparison
    trained = record_to_numpy(
        train(make_message(plain), make_context(tiny_run_config)).content["arrays"]
    )
    received = record_to_numpy(plain["arrays"])
    residual = record_to_numpy(context.state[RESIDUAL_KEY])
    for k in trained:  # residual = true update - what was sent
        np.testing.assert_allclose(
            residual[k], trained[k] - received[k] - sent_update[k], atol=1e-5
        )
    assert any(np.abs(v).max() > 0 for v in residual.values())
