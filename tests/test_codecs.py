"""Codec layer: bit packing, affine quantization bounds, the container and its validation."""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from strategies.codecs import (
    AffineCodec,
    CodecError,
    FloatCodec,
    codec_spec,
    decode_blob,
    get_codec,
    read_header,
)
from strategies.codecs.bitpack import pack_bits, packed_size, unpack_bits
from strategies.codecs.quantize import affine_codes, affine_grid, channels_of, quantize, row_ranges

FAST = settings(max_examples=60, deadline=None)


@FAST
@given(bits=st.integers(1, 8), data=st.data())
def test_packing_is_exact_and_dense_for_every_width(bits: int, data) -> None:
    count = data.draw(st.integers(0, 300))
    values = data.draw(hnp.arrays(np.uint8, count, elements=st.integers(0, (1 << bits) - 1)))
    packed = pack_bits(values, bits)
    assert len(packed) == packed_size(count, bits) == -(-count * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, count), values)


def test_three_bit_values_straddle_byte_boundaries() -> None:
    # 0b101, 0b011, 0b111 -> 101 011 11|1 0000000
    assert pack_bits(np.array([5, 3, 7], np.uint8), 3) == bytes([0b10101111, 0b10000000])


def _scales_sent(blob: bytes, shape: tuple, per_channel: bool) -> np.ndarray:
    """The real per-row scales in a one-tensor blob (fp16 ones times their fp32 unit)."""
    entries, start = read_header(blob)
    c = channels_of(shape, per_channel)
    if entries[0].meta == "f16":
        unit = float(np.frombuffer(blob[start : start + 4], "<f4")[0])
        return np.frombuffer(blob[start + 4 : start + 4 + 2 * c], "<f2").astype(np.float64) * unit
    return np.frombuffer(blob[start : start + 4 * c], "<f4").astype(np.float64)


def _tensors(max_dims: int = 4):
    shapes = hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=6)
    magnitude = st.sampled_from([1e-30, 1e-6, 1.0, 1e3, 1e30])
    return st.tuples(shapes, magnitude, st.integers(0, 2**16)).map(
        lambda t: (np.random.default_rng(t[2]).normal(size=t[0]) * t[1]).astype(np.float32)
    )


@FAST
@given(
    x=_tensors(),
    bits=st.integers(1, 8),
    per_channel=st.booleans(),
    meta=st.sampled_from(["fp16", "fp32"]),
    shift=st.sampled_from([0.0, 1.0, -1e4]),
)
def test_every_element_is_within_half_a_step_of_the_scale_sent(x, bits, per_channel, meta, shift):
    x = (x + np.float32(shift)).astype(np.float32)
    codec = AffineCodec(bits, per_channel=per_channel, meta=meta, keep_1d=False)
    blob = codec.encode({"t": x})
    got = decode_blob(blob, accept=codec)["t"]
    scale = _scales_sent(blob, x.shape, per_channel)
    c = channels_of(x.shape, per_channel)
    rows_err = np.abs(got.astype(np.float64) - x.astype(np.float64)).reshape(c, -1)
    eps = np.finfo(np.float32).eps * np.abs(x.astype(np.float64)).reshape(c, -1).max(axis=1)
    bound = scale / 2 + 2 * eps + 1e-45
    assert np.all(rows_err.max(axis=1) <= bound)


@pytest.mark.parametrize("bits", [1, 4, 8])
@pytest.mark.parametrize("shift", [0.0, 30.0, 1e4])
def test_float32_passes_give_the_codes_of_exact_arithmetic(bits: int, shift: float) -> None:
    # The fast path (float32, fused) and the exact path (float64 input) must choose the same
    # code for every element, except where exact arithmetic lands within a hair of a tie.
    rng = np.random.default_rng(bits)
    rows = (rng.normal(size=(16, 999)) + shift).astype(np.float32)
    lo, hi = row_ranges(rows)
    scale, offset, unit, fits = affine_grid(lo, hi, [16], bits, "f16")
    assert fits[0]
    fast = affine_codes(rows, hi, scale, offset, float(unit[0]), bits)
    exact = affine_codes(rows.astype(np.float64), hi, scale, offset, float(unit[0]), bits)
    step = scale.astype(np.float64)[:, None] * unit[0]
    where = (rows - offset.astype(np.float64)[:, None] * unit[0]) / step
    near_tie = np.abs(where - np.floor(where) - 0.5) < 1e-3
    assert np.array_equal(fast[~near_tie], exact[~near_tie])
    assert np.abs(fast.astype(int) - exact.astype(int)).max() <= 1


def test_a_message_encodes_each_tensor_as_it_would_alone() -> None:
    # The grids of a message are computed in one batch; each tensor's body must be the one
    # it gets when encoded by itself.
    rng = np.random.default_rng(0)
    tensors = OrderedDict(
        a=rng.normal(size=(8, 5)).astype(np.float32),
        norm=rng.normal(size=7).astype(np.float32),
        b=(rng.normal(size=(3, 2, 3, 3)) * 1e-6).astype(np.float32),
        c=np.full((4, 4), -2.0, np.float32),
        d=(rng.normal(size=(5, 6)) * 1e30).astype(np.float32),
    )
    for codec in (AffineCodec(4), AffineCodec(3, per_channel=False, meta="fp32")):
        together = codec.encode(tensors)
        body = together[read_header(together)[1] :]
        alone = b""
        for name, value in tensors.items():
            blob = codec.encode({name: value})
            alone += blob[read_header(blob)[1] :]
        assert body == alone


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("per_channel", [True, False])
def test_constant_single_and_empty_tensors_round_trip(bits: int, per_channel: bool) -> None:
    codec = AffineCodec(bits, per_channel=per_channel)
    tensors = OrderedDict(
        const=np.full((3, 4), 2.5, np.float32),
        single=np.array([[7.25]], np.float32),
        empty=np.zeros((0, 3), np.float32),
        norm=np.arange(5, dtype=np.float32),
    )
    got = decode_blob(codec.encode(tensors), accept=codec)
    np.testing.assert_array_equal(got["const"], tensors["const"])
    np.testing.assert_array_equal(got["single"], tensors["single"])
    assert got["empty"].shape == (0, 3)
    np.testing.assert_array_equal(got["norm"], tensors["norm"])  # 1-D stays fp32


def test_per_channel_scales_follow_dim_zero() -> None:
    x = np.stack([np.linspace(0, 1, 8), np.linspace(0, 100, 8)]).astype(np.float32)
    q, scale, _, _ = quantize(x, 4, per_channel=True, meta="f32")
    assert q.shape == (2, 8) and scale[1] > 50 * scale[0]
    _, scale_t, _, _ = quantize(x, 4, per_channel=False, meta="f32")
    assert scale_t.shape == (1,)


@pytest.mark.parametrize("spec", ["fp32", "fp16"])
def test_float_codecs(spec: str) -> None:
    x = OrderedDict(a=np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32))
    got = decode_blob(get_codec(spec).encode(x))["a"]
    if spec == "fp32":
        np.testing.assert_array_equal(got, x["a"])
    else:
        np.testing.assert_allclose(got, x["a"], rtol=1e-3)


def test_vec_quant_quantizes_the_1d_tensors_too() -> None:
    rng = np.random.default_rng(0)
    tensors = OrderedDict(
        w=rng.normal(size=(8, 16)).astype(np.float32),
        norm=rng.normal(size=300).astype(np.float32),
    )
    plain, packed = get_codec(codec_spec(4)), get_codec(codec_spec(4, vectors="quant"))
    assert packed.spec == "affine:bits=4:gran=channel:meta=fp16:vec=quant"
    assert get_codec(packed.spec).spec == packed.spec
    entries = {e.name: e for e in read_header(packed.encode(tensors))[0]}
    assert entries["norm"].kind == "q"
    assert entries["norm"].body_size() == 4 + 2 * 2 + 300 // 2  # unit, one scale and offset
    assert {e.name: e.kind for e in read_header(plain.encode(tensors))[0]}["norm"] == "f32"
    assert len(packed.encode(tensors)) < len(plain.encode(tensors)) - 4 * 300 + 300 // 2 + 64
    # a receiver that asked for fp32 vectors refuses quantized ones, and the other way round
    with pytest.raises(CodecError, match="not as affine"):
        decode_blob(packed.encode(tensors), accept=plain)
    with pytest.raises(CodecError, match="not as affine"):
        decode_blob(plain.encode(tensors), accept=packed)
    got = decode_blob(packed.encode(tensors), accept=packed)["norm"]
    step = (tensors["norm"].max() - tensors["norm"].min()) / 15
    assert np.abs(got - tensors["norm"]).max() <= step / 2 * (1 + 1e-3)


def test_sizes_are_what_the_bits_promise() -> None:
    x = OrderedDict(w=np.random.default_rng(0).normal(size=(64, 16, 3, 3)).astype(np.float32))
    n = 64 * 16 * 9

    def body(codec) -> int:
        blob = codec.encode(x)
        return len(blob) - read_header(blob)[1]

    assert body(FloatCodec("f32")) == 4 * n
    assert body(FloatCodec("f16")) == 2 * n
    assert body(AffineCodec(4, meta="fp32")) == n // 2 + 64 * 8  # codes + scale/offset per row
    assert body(AffineCodec(4, meta="fp16")) == n // 2 + 64 * 4 + 4  # + one fp32 unit
    assert body(AffineCodec(3, meta="fp16")) == -(-n * 3 // 8) + 64 * 4 + 4


@pytest.mark.parametrize("magnitude", [1e-7, 1e-3, 1.0, 1e4])
def test_fp16_metadata_keeps_its_precision_at_any_magnitude(magnitude: float) -> None:
    """Scales sent in fp16 (relative to an fp32 unit) are within 0.2 % of the ideal ones.

    Updates of 1e-7 would be fp16 subnormals with a few bits of precision without the unit.
    """
    x = (np.random.default_rng(0).normal(size=(32, 16)) * magnitude).astype(np.float32)
    blob = AffineCodec(4, meta="fp16").encode({"w": x})
    assert read_header(blob)[0][0].meta == "f16"
    ideal = (x.max(axis=1).astype(np.float64) - x.min(axis=1)) / 15
    sent = _scales_sent(blob, x.shape, True)
    assert np.all(sent >= ideal * (1 - 1e-6)) and np.all(sent <= ideal * 1.002 + 1e-45)


def test_ranges_too_large_for_any_metadata_are_refused() -> None:
    x = np.array([[-3e38, 3e38]], np.float32)
    with pytest.raises(CodecError, match="too large"):
        AffineCodec(1, meta="fp16").encode({"w": x})


def _blob() -> bytes:
    return AffineCodec(4).encode(
        OrderedDict(a=np.ones((4, 3), np.float32) * np.arange(3), b=np.ones(2, np.float32))
    )


_F32_ONE = struct.pack("<f", 1.0)


def _with_header(lines: list, body: bytes = b"") -> bytes:
    import json

    header = zlib.compress(json.dumps({"t": lines}).encode())
    return b"FLC1" + struct.pack("<I", len(header)) + header + body


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"nope", "bad magic"),
        (_blob()[:-1], "body is"),
        (_blob() + b"\0", "body is"),
        (b"FLC1" + struct.pack("<I", 10**6) + b"x", "exceeds"),
        (b"FLC1" + struct.pack("<I", 3) + b"abc", "corrupt header"),
        (_with_header([["a", [2], "int3"]]), "unknown kind"),
        (_with_header([["a", [-1], "f32"]]), "not a list of sizes"),
        (_with_header([["a", [2**40], "f32"]]), "not a list of sizes"),
        (_with_header([["a", [1], "f32"], ["a", [1], "f32"]], b"\0" * 8), "duplicate"),
        (_with_header([["a", [2, 2], "q", 9, "c", "f16"]]), "quantization parameters"),
        (
            _with_header([["a", [1, 1], "q", 4, "c", "f16"]], _F32_ONE + b"\0\x7c\0\0\0"),
            "non-finite",
        ),
        (_with_header([["a", [1, 1], "q", 4, "c", "f16"]], b"\0\0\xc0\x7f" + b"\0" * 5), "unit"),
    ],
)
def test_hostile_payloads_are_refused_with_a_clear_error(blob: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        decode_blob(blob)


def test_decoder_checks_names_shapes_and_codec_parameters() -> None:
    blob = _blob()
    with pytest.raises(CodecError, match="names differ"):
        decode_blob(blob, expected={"a": (4, 3)})
    with pytest.raises(CodecError, match="shape"):
        decode_blob(blob, expected={"a": (3, 4), "b": (2,)})
    with pytest.raises(CodecError, match="not as affine:bits=8"):
        decode_blob(blob, accept=get_codec("affine:bits=8:gran=channel:meta=fp16"))
    assert decode_blob(blob, expected={"a": (4, 3), "b": (2,)}, accept=AffineCodec(4))


@pytest.mark.parametrize(
    "spec",
    [
        "int8",
        "affine:bits=9:gran=channel:meta=fp16",
        "affine:bits=4",
        "affine:x=1",
        "affine:bits=4:gran=channel:meta=fp16:vec=fp32",  # the default is never spelled out
        "affine:bits=4:gran=channel:meta=fp16:vec=int8",
    ],
)
def test_unknown_or_malformed_codec_names_are_refused(spec: str) -> None:
    with pytest.raises(CodecError):
        get_codec(spec)


def test_non_finite_input_is_refused_at_encode() -> None:
    with pytest.raises(CodecError, match="NaN"):
        AffineCodec(4).encode({"a": np.array([[np.nan, 1.0]], np.float32)})
