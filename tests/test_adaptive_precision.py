"""Adaptive precision (``uplink-budget-bytes``): each tensor's width chosen under a byte budget
(``strategies.codecs.allocate``), decoded like any affine message, refused beyond its budget."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flora_app.results import read_rounds
from strategies.codecs import CodecError, codec_spec, decode_blob, get_codec, read_header
from strategies.codecs.allocate import allocate_bits


def _tensors(seed: int, spread: float) -> OrderedDict[str, np.ndarray]:
    """Tensors whose scales differ by up to ``10**spread``, as a LoRA update's do (B rows
    near zero early on, A at its init scale, the head's updates in between)."""
    rng = np.random.default_rng(seed)
    scales = rng.permutation(np.logspace(-spread, 0.0, 6))
    out = OrderedDict(
        (f"t{i}", (rng.normal(size=(16, 3, 3, 3)) * s).astype(np.float32))
        for i, s in enumerate(scales)
    )
    out["bias"] = rng.normal(size=16).astype(np.float32)
    return out


def _sse(got: OrderedDict, want: OrderedDict) -> float:
    return sum(float(((got[k] - want[k]).astype(np.float64) ** 2).sum()) for k in want)


def _shapes(tensors: OrderedDict) -> dict:
    return {k: v.shape for k, v in tensors.items()}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), bits=st.integers(2, 6), spread=st.floats(0.0, 3.0))
def test_a_budget_of_a_fixed_width_message_is_kept_and_errs_no_more(
    seed: int, bits: int, spread: float
) -> None:
    tensors = _tensors(seed, spread)
    fixed = get_codec(codec_spec(bits))
    fixed_blob = fixed.encode(tensors)
    adaptive = get_codec(codec_spec(8, budget=len(fixed_blob)))
    blob = adaptive.encode(tensors)
    assert len(blob) <= len(fixed_blob)
    got = decode_blob(blob, _shapes(tensors), accept=adaptive)
    # The allocation minimises the uniform-error model (the fixed width competes in it), not
    # the measured error, so equal scales may land a little either side of the fixed width
    # (600 draws: at most 1.03x); scales 100x apart gain 4-25x from 3 bits on (at 2 bits the
    # 2-bit floor takes the whole budget).
    ratio = _sse(got, tensors) / _sse(decode_blob(fixed_blob), tensors)
    assert ratio <= 1.1, ratio
    if spread >= 2.0 and bits >= 3:
        assert ratio < 0.5, ratio


def test_each_tensor_decodes_as_a_fixed_width_codec_of_its_width() -> None:
    tensors = _tensors(3, 2.0)
    adaptive = get_codec(codec_spec(8, budget=1500))
    blob = adaptive.encode(tensors)
    widths = {e.name: e.bits for e in read_header(blob)[0] if e.kind == "q"}
    assert len(set(widths.values())) > 1  # the budget really spreads the widths
    got = decode_blob(blob, _shapes(tensors), accept=adaptive)
    for name, width in widths.items():
        alone = get_codec(codec_spec(width)).encode(OrderedDict([(name, tensors[name])]))
        np.testing.assert_array_equal(got[name], decode_blob(alone)[name])
    np.testing.assert_array_equal(got["bias"], tensors["bias"])  # 1-D tensors stay fp32


def test_the_widest_tensors_get_the_bits() -> None:
    weights = np.array([100.0, 1.0, 0.01, 0.0])
    sizes = np.full(4, 1000)
    assert list(allocate_bits(weights, sizes, 8, 400)) == [1, 1, 1, 1]  # not even 1 bit fits
    assert list(allocate_bits(weights, sizes, 8, 800)) == [3, 1, 1, 1]  # from 1 bit up
    assert list(allocate_bits(weights, sizes, 8, 2000)) == [8, 4, 2, 2]  # 2 bits each first
    assert list(allocate_bits(weights, sizes, 8, 10**6)) == [8, 8, 8, 2]  # nothing to gain
    assert list(allocate_bits(weights, sizes, 3, 10**6)) == [3, 3, 3, 2]


def test_a_server_refuses_widths_and_sizes_its_budget_could_not_produce() -> None:
    tensors = _tensors(4, 1.0)
    small = get_codec(codec_spec(4, budget=1500))
    with pytest.raises(CodecError, match="byte budget"):
        decode_blob(get_codec(codec_spec(4, budget=4000)).encode(tensors), accept=small)
    with pytest.raises(CodecError, match="not as"):  # a width above the widest allowed
        decode_blob(get_codec(codec_spec(8, budget=4000)).encode(tensors), accept=small)
    assert decode_blob(small.encode(tensors), accept=small)


@pytest.mark.parametrize(
    "name",
    [
        "affine:bits=8:gran=channel:meta=fp16:budget=0",  # the default, spelled out
        "affine:bits=8:gran=channel:meta=fp16:budget=-5",
        "affine:bits=8:gran=channel:meta=fp16:budget=x",
        "affine:bits=8:gran=channel:budget=100:meta=fp16",  # out of order
    ],
)
def test_budget_names_are_canonical(name: str) -> None:
    with pytest.raises(CodecError, match="malformed codec"):
        get_codec(name)
    assert get_codec(codec_spec(8, budget=100)).spec == codec_spec(8, budget=100)


def test_a_run_with_a_budget_sends_replies_within_it(tmp_path, tiny_run_config: dict) -> None:
    from flora_app.config import FloraConfig
    from flora_app.server_app import run
    from tests.helpers import LocalGrid

    def reply_bytes(name: str, **keys) -> list[float]:
        cfg = FloraConfig.from_run_config(
            {
                **tiny_run_config,
                "strategy": "flocora",
                "quant-bits": 8,
                "num-server-rounds": 1,
                "fraction-train": 0.5,
                "output-dir": str(tmp_path),
                "run-name": name,
                **keys,
            }
        )
        run(LocalGrid(cfg.to_run_config(), 4), cfg)
        rounds = read_rounds(tmp_path / name)
        assert [r["rejected_replies"] + r["failed_replies"] for r in rounds] == [0]
        return [r["bytes_up"] / r["replies"] for r in rounds]

    # The tiny CNN's 342 values: a container of 742 B at 8 bits, 588 at 4; a budget of 600
    # makes every reply's container at least 142 B smaller; on the wire the header's longer
    # codec name (":budget=600") gives back about 11 of them.
    fixed = reply_bytes("fixed")
    budget = reply_bytes("budget", **{"uplink-budget-bytes": 600})
    assert all(b <= f - 120 for b, f in zip(budget, fixed, strict=True)), (budget, fixed)
