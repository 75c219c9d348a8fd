"""The lossless zstd stage (``entropy-coder='zstd'``): exact round trips for every codec, a
decoder that inflates nothing it was not promised, and a run whose rounds equal the plain
run's in everything but bytes, with fewer bytes."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from flora_app.config import FloraConfig
from flora_app.results import read_rounds
from flora_app.server_app import run
from strategies.codecs import CodecError, decode_blob, entries_of, get_codec, with_entropy
from strategies.codecs.entropy import MAGIC, bound
from tests.helpers import LocalGrid

SPECS = [
    "fp32",
    "fp16",
    "affine:bits=4:gran=channel:meta=fp16",
    "affine:bits=2:gran=tensor:meta=fp32",
    "topk:density=0.1:scope=global:values=32",
    "topk:density=0.3:scope=tensor:values=8",
]


def _tensors(seed: int) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict(
        a=rng.normal(size=(16, 3, 3, 3)).astype(np.float32),
        b=(rng.normal(size=(10, 16)) * 1e-3).astype(np.float32),
        norm=rng.normal(size=10).astype(np.float32),
    )


def _shapes(tensors: OrderedDict) -> dict:
    return {k: v.shape for k, v in tensors.items()}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), spec=st.sampled_from(SPECS))
def test_the_stage_is_lossless_for_every_codec(seed: int, spec: str) -> None:
    tensors = _tensors(seed)
    plain, packed = get_codec(spec), get_codec(with_entropy(spec, "zstd"))
    blob = packed.encode(tensors)
    assert blob[:4] == MAGIC and packed.spec == spec + "+zstd"
    assert len(blob) <= packed.max_message_bytes(_shapes(tensors))
    got = decode_blob(blob, _shapes(tensors), accept=packed)
    want = decode_blob(plain.encode(tensors), _shapes(tensors), accept=plain)
    for name in tensors:
        np.testing.assert_array_equal(got[name], want[name])


def test_the_bound_covers_incompressible_messages() -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=200_000, dtype=np.uint8).tobytes()
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(noise)
    assert len(MAGIC) + len(frame) <= bound(len(noise))


def test_a_receiver_gets_the_stage_it_asked_for_and_no_other() -> None:
    tensors = _tensors(0)
    spec = SPECS[2]
    plain, packed = get_codec(spec), get_codec(with_entropy(spec, "zstd"))
    with pytest.raises(CodecError, match="is zstd-compressed, unlike"):
        decode_blob(packed.encode(tensors), accept=plain)
    with pytest.raises(CodecError, match="is not zstd-compressed, unlike"):
        decode_blob(plain.encode(tensors), accept=packed)
    with pytest.raises(CodecError, match="already has the entropy stage"):
        get_codec(spec + "+zstd+zstd")
    assert with_entropy(spec, "none") == spec and with_entropy(packed.spec, "zstd") == packed.spec


def _frame(payload: bytes, **options: bool) -> bytes:
    return MAGIC + zstandard.ZstdCompressor(level=3, **options).compress(payload)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda b: b[:-4], "truncated"),
        (lambda b: b + b"\0", "followed by data"),
        (
            lambda b: b[:24] + bytes(x ^ 0xFF for x in b[24:64]) + b[64:],
            "corrupt zstd frame|not its declared size",
        ),
        (lambda b: MAGIC + b"\x28\xb5\x2f", "corrupt zstd frame header"),
    ],
    ids=["truncated", "trailing", "corrupt", "short-header"],
)
def test_damaged_frames_are_refused(edit, match: str) -> None:
    tensors = _tensors(1)
    codec = get_codec(with_entropy(SPECS[4], "zstd"))
    with pytest.raises(CodecError, match=match):
        decode_blob(edit(codec.encode(tensors)), _shapes(tensors), accept=codec)


def test_nothing_inflates_beyond_what_the_model_could_need() -> None:
    # 64 MB of zeros compress to a few KB: a server bounds the inflated size by its model's
    # largest message before decompressing anything, so the bomb is refused unopened.
    tensors = _tensors(2)
    codec = get_codec(with_entropy(SPECS[2], "zstd"))
    bomb = _frame(b"FLC1" + bytes(64 << 20))
    assert len(bomb) < 64 << 10
    with pytest.raises(CodecError, match=r"more than the \d+ allowed"):
        decode_blob(bomb, _shapes(tensors), accept=codec)
    unsized = _frame(codec.inner.encode(tensors), write_content_size=False)
    with pytest.raises(CodecError, match="does not declare its decompressed size"):
        decode_blob(unsized, _shapes(tensors), accept=codec)


@pytest.mark.parametrize("spec", [SPECS[2], SPECS[4]])
def test_the_header_is_read_without_inflating_the_body(spec: str) -> None:
    # The server's per-round payload statistics read only the header: a body damaged past
    # the header (here its checksum) still yields the same entries as the plain message,
    # while decoding it is refused.
    tensors = OrderedDict(big=np.random.default_rng(3).normal(size=(512, 512)).astype("f4"))
    plain, packed = get_codec(spec), get_codec(with_entropy(spec, "zstd"))
    blob = packed.encode(tensors)
    damaged = blob[:-4] + bytes(b ^ 0xFF for b in blob[-4:])  # the frame's checksum
    assert entries_of(damaged) == entries_of(plain.encode(tensors))
    with pytest.raises(CodecError):
        decode_blob(damaged, _shapes(tensors), accept=packed)
    with pytest.raises(CodecError, match="corrupt zstd frame"):
        entries_of(MAGIC + bytes(16))


@pytest.mark.parametrize(
    ("strategy", "dense_broadcast"),
    # flocora broadcasts dense fp32 for training; flasc only for evaluation (its training
    # broadcast is top-k, which sends no zeros)
    [("flocora", "bytes_down"), ("flasc", "bytes_eval_down")],
)
def test_a_run_with_the_stage_equals_the_plain_run_with_fewer_bytes(
    tmp_path: Path, tiny_run_config: dict, strategy: str, dense_broadcast: str
) -> None:
    base = {
        **tiny_run_config,
        "strategy": strategy,
        "quant-bits": 4,
        "num-server-rounds": 2,
        "fraction-train": 0.5,
        "fraction-evaluate": 0.5,
        "output-dir": str(tmp_path),
    }
    runs = {}
    for coder in ("none", "zstd"):
        cfg = FloraConfig.from_run_config({**base, "entropy-coder": coder, "run-name": coder})
        run(LocalGrid(cfg.to_run_config(), 4), cfg)
        runs[coder] = read_rounds(tmp_path / coder)
    for plain, packed in zip(runs["none"], runs["zstd"], strict=True):
        # lossless: everything but the byte counts and the timings is identical
        same = [k for k in plain if not k.startswith("bytes") and not k.endswith("seconds")]
        assert {k: plain[k] for k in same} == {k: packed[k] for k in same}
        # The stage is on the wire: a message that does not compress (the tiny CNN's 4-bit
        # replies) costs at most its frame (magic, header, checksum: under 32 bytes), ...
        for key in ("bytes_up", "bytes_down"):
            assert packed[key] != plain[key] and packed[key] <= plain[key] + 32 * plain["clients"]
    # ... and one that does shrinks: round 1's dense broadcast, where most of every LoRA B is
    # still zero (it starts at zero).
    assert runs["zstd"][0][dense_broadcast] < 0.95 * runs["none"][0][dense_broadcast]
