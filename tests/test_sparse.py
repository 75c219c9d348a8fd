"""Top-k sparse codec (FLASC's wire format): exact k, index coding, values, hostile payloads."""

from __future__ import annotations

import json
import struct
import zlib
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.codecs import CodecError, SparseCodec, decode_blob, get_codec, read_header
from strategies.codecs.sparse import (
    decode_gaps,
    encode_bitmap,
    encode_gaps,
    encode_indices,
    keep_count,
    top_k,
)

FAST = settings(max_examples=60, deadline=None)


def _message(seed: int, sizes: list[tuple[int, ...]]) -> OrderedDict:
    rng = np.random.default_rng(seed)
    return OrderedDict(
        (f"t{i}", (rng.normal(size=s) * 10 ** rng.uniform(-3, 1)).astype(np.float32))
        for i, s in enumerate(sizes)
    )


shapes = st.lists(
    st.tuples(st.integers(1, 12), st.integers(1, 9)).map(lambda t: t if t[1] > 1 else (t[0],)),
    min_size=1,
    max_size=5,
)


@FAST
@given(
    seed=st.integers(0, 2**16), sizes=shapes, density=st.floats(0.01, 1.0), per_tensor=st.booleans()
)
def test_exactly_k_largest_survive_exactly_and_the_rest_are_zero(seed, sizes, density, per_tensor):
    tensors = _message(seed, sizes)
    codec = SparseCodec(density, per_tensor=per_tensor)
    got = decode_blob(codec.encode(tensors), accept=codec)
    groups = [[name] for name in tensors] if per_tensor else [list(tensors)]
    for names in groups:
        x = np.concatenate([tensors[n].reshape(-1) for n in names])
        y = np.concatenate([got[n].reshape(-1) for n in names])
        k = keep_count(x.size, density)
        kept = top_k(x, k)
        np.testing.assert_array_equal(y[kept], x[kept])  # fp32 values travel exactly
        dropped = np.setdiff1d(np.arange(x.size), kept)
        assert not y[dropped].any()
        if dropped.size:
            assert np.abs(x[kept]).min() >= np.abs(x[dropped]).max()


def _reference_top_k(x: np.ndarray, k: int) -> np.ndarray:
    """The k largest |x| by a full stable sort: the definition the fast selection must meet."""
    order = np.lexsort((np.arange(x.size), -np.abs(x)))  # by magnitude, then by index
    return np.sort(order[:k])


@pytest.mark.parametrize(
    "layout", ["normal", "ties", "unsampled peaks", "sampled peaks", "few distinct"]
)
@pytest.mark.parametrize("density", [0.001, 0.1, 0.5])
def test_large_selections_equal_a_full_sort(layout: str, density: float) -> None:
    # Large enough for the sampled threshold. "unsampled peaks" puts the large values where
    # the stride-64 sample never looks (the estimate keeps far too many candidates);
    # "sampled peaks" only where it looks (too few: the fallback to all values must run).
    n = 150_000
    rng = np.random.default_rng(3)
    x = rng.normal(size=n).astype(np.float32)
    if layout == "ties":
        x = np.round(x * 4).astype(np.float32) / 4
    elif layout == "unsampled peaks":
        x = np.zeros(n, np.float32)
        peaks = np.flatnonzero(np.arange(n) % 64 != 0)[: int(0.6 * n)]
        x[peaks] = rng.uniform(1, 2, size=peaks.size).astype(np.float32)
    elif layout == "sampled peaks":
        x = rng.normal(size=n).astype(np.float32) * np.float32(1e-3)
        x[::64] = rng.uniform(1, 2, size=x[::64].size).astype(np.float32)
    elif layout == "few distinct":
        x = rng.integers(-2, 3, size=n).astype(np.float32)
    k = keep_count(n, density)
    np.testing.assert_array_equal(top_k(x, k), _reference_top_k(x, k))


def test_ties_are_broken_toward_lower_indices_deterministically() -> None:
    x = np.array([1.0, -3.0, 3.0, 3.0, 2.0], np.float32)
    np.testing.assert_array_equal(top_k(x, 2), [1, 2])
    np.testing.assert_array_equal(top_k(x, 3), [1, 2, 3])
    codec = SparseCodec(0.4)
    assert codec.encode({"x": x}) == codec.encode({"x": x.copy()})


@FAST
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**16), density=st.floats(0.0005, 1.0))
def test_index_coding_picks_the_smaller_and_round_trips(n, seed, density) -> None:
    idx = np.sort(np.random.default_rng(seed).choice(n, keep_count(n, density), replace=False))
    kind, body = encode_indices(idx, n)
    assert len(body) == min(len(encode_gaps(idx)), len(encode_bitmap(idx, n)))
    assert kind == ("g" if len(encode_gaps(idx)) < (n + 7) // 8 else "b")
    blob = SparseCodec(1.0).encode({"x": np.zeros(n, np.float32)})  # smoke: container accepts
    assert read_header(blob)[0][0].k == n


def test_sparse_messages_use_gaps_and_dense_ones_a_bitmap() -> None:
    x = _message(0, [(64, 64)])
    assert read_header(SparseCodec(0.01).encode(x))[0][0].index == "g"
    assert read_header(SparseCodec(0.5).encode(x))[0][0].index == "b"


def test_large_gaps_need_multi_byte_varints() -> None:
    idx = np.array([0, 200, 70_000, 2**33], np.int64)
    body = encode_gaps(idx)
    assert len(body) == 1 + 2 + 3 + 5
    np.testing.assert_array_equal(decode_gaps(body, 2**34, 4), idx)


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_kept_values_through_a_value_codec(bits: int) -> None:
    tensors = _message(1, [(32, 16), (40,)])
    codec = SparseCodec(0.1, value_bits=bits)
    got = decode_blob(codec.encode(tensors), accept=codec)
    x = np.concatenate([t.reshape(-1) for t in tensors.values()])
    y = np.concatenate([t.reshape(-1) for t in got.values()])
    kept = top_k(x, keep_count(x.size, 0.1))
    span = x[kept].max() - x[kept].min()
    tolerance = abs(x[kept]).max() * 1e-3 if bits == 16 else span / (2**bits - 1)
    assert np.abs(y[kept] - x[kept]).max() <= tolerance
    fp32 = len(SparseCodec(0.1).encode(tensors))
    assert len(codec.encode(tensors)) < fp32


def test_spec_round_trips_through_get_codec() -> None:
    codec = SparseCodec(0.25, per_tensor=True, value_bits=8)
    again = get_codec(codec.spec)
    assert isinstance(again, SparseCodec) and again.spec == codec.spec


def _with_header(lines: list, body: bytes) -> bytes:
    header = zlib.compress(json.dumps({"t": lines}).encode())
    return b"FLC1" + struct.pack("<I", len(header)) + header + body


F32 = struct.pack("<f", 1.0)


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        # 10 values, bitmap of 2 bytes with a pad bit set (index 15 >= 10)
        (_with_header([["x", [10], "s", 1, "b", 2, "f32", 0, "f32"]], b"\x00\x01" + F32), "beyond"),
        # bitmap marks 2 indices, header says 1
        (
            _with_header([["x", [10], "s", 1, "b", 2, "f32", 0, "f32"]], b"\xc0\x00" + F32),
            "marks 2",
        ),
        # gap varint left unterminated
        (
            _with_header([["x", [1000], "s", 1, "g", 1, "f32", 0, "f32"]], b"\x80" + F32),
            "complete varints",
        ),
        # gap points past the end
        (
            _with_header([["x", [100], "s", 1, "g", 1, "f32", 0, "f32"]], b"\x7f" + F32),
            "beyond|out of range",
        ),
        # more kept entries than values
        (
            _with_header([["x", [4], "s", 5, "b", 1, "f32", 0, "f32"]], b"\xff" + F32 * 5),
            "bad sparse",
        ),
        # index section size impossible for a bitmap
        (
            _with_header([["x", [100], "s", 1, "b", 3, "f32", 0, "f32"]], b"\0\0\0" + F32),
            "impossible",
        ),
    ],
)
def test_hostile_sparse_payloads_are_refused(blob: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        decode_blob(blob)


def test_a_message_with_the_wrong_total_k_is_refused() -> None:
    tensors = _message(2, [(20, 5)])
    blob = SparseCodec(0.2).encode(tensors)
    with pytest.raises(CodecError, match="kept-entry count"):
        decode_blob(blob, accept=SparseCodec(0.1))
    assert decode_blob(blob, accept=SparseCodec(0.2))
