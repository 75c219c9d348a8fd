"""Fuzzing the server's intake: random, truncated, bit-flipped and adversarially shaped payloads.

Every case must end in a clear rejection (``CodecError`` from the decoder; a counted, logged
rejection from ``aggregate_train``), never another exception, never a hang, and never an
allocation larger than the model the server expects. Bounded: a fixed number of examples each,
no deadline games.
"""

from __future__ import annotations

import json
import re
import struct
import tracemalloc
import zlib
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies.codecs import CodecError, codec_spec, decode_blob, get_codec, sparse_spec
from strategies.compression import CompressionStrategy
from strategies.wire import (
    blob_to_record,
    encode_content,
    make_header,
    numpy_to_record,
    record_to_blob,
    record_to_numpy,
)
from tests.helpers import make_arrays, make_message, send_round

CODECS = [
    "fp32",
    "fp16",
    codec_spec(4),
    codec_spec(3, "tensor", "fp32"),
    sparse_spec(0.3, "global", 32),
    sparse_spec(0.3, "tensor", 8),
    codec_spec(8, budget=400),
]
SHAPES = {k: v.shape for k, v in make_arrays(0).items()}
MODEL_BYTES = sum(4 * int(np.prod(s)) for s in SHAPES.values())
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _blob(codec: str, seed: int = 1) -> bytes:
    return get_codec(codec).encode(make_arrays(seed))


def _decode_or_reject(blob: bytes, codec: str) -> None:
    """Decoding either succeeds with the model's shapes or raises CodecError; memory bounded."""
    tracemalloc.start()
    try:
        out = decode_blob(blob, SHAPES, accept=get_codec(codec))
    except CodecError:
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # a copy of the blob, the decoded model and index scratch: a few model sizes at most
        assert peak < 8 * MODEL_BYTES + len(blob) + (1 << 20), peak
    assert {k: v.shape for k, v in out.items()} == SHAPES


@FUZZ
@given(codec=st.sampled_from(CODECS), data=st.binary(max_size=4096))
def test_random_bytes_are_rejected(codec: str, data: bytes) -> None:
    _decode_or_reject(data, codec)
    _decode_or_reject(b"FLC1" + data, codec)


@FUZZ
@given(codec=st.sampled_from(CODECS), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_payloads_are_rejected(codec: str, cut: float) -> None:
    blob = _blob(codec)
    truncated = blob[: int(cut * len(blob))]
    try:
        decode_blob(truncated, SHAPES, accept=get_codec(codec))
    except CodecError:
        return
    raise AssertionError("a truncated payload decoded")


@FUZZ
@given(codec=st.sampled_from(CODECS), flips=st.lists(st.integers(0, 10**9), min_size=1, max_size=8))
def test_bit_flipped_payloads_decode_to_the_model_or_are_rejected(codec: str, flips) -> None:
    blob = bytearray(_blob(codec))
    for flip in flips:
        blob[flip % len(blob)] ^= 1 << (flip % 8)
    _decode_or_reject(bytes(blob), codec)


def _container(entries: list[list], body: bytes) -> bytes:
    header = zlib.compress(json.dumps({"t": entries}).encode())
    return b"FLC1" + struct.pack("<I", len(header)) + header + body


# Headers a hostile client might write, each paired with a small body.
ADVERSARIAL = st.one_of(
    # huge declared shapes (would be petabytes if allocated)
    st.builds(lambda d: [["a", [d, d, d, 3], "f32"]], st.integers(10**4, 10**9)),
    # negative, zero-length, non-integer and too many dimensions
    st.builds(lambda d: [["a", [d, 3, 3, 3], "f32"]], st.integers(-(10**9), -1)),
    st.just([["a", [4.5, 3, 3, 3], "f32"]]),
    st.just([["a", [1] * 20, "f32"]]),
    # wrong dtypes / kinds and malformed quantization parameters
    st.sampled_from(["f64", "i8", "q", "s", "", "x" * 100]).map(lambda k: [["a", [4, 3, 3, 3], k]]),
    st.builds(lambda b: [["a", [4, 3, 3, 3], "q", b, "c", "f16"]], st.integers(-5, 64)),
    st.builds(
        lambda k, ib: [["a", [4, 3, 3, 3], "s", k, "g", ib, "f32", 0, "f32"]],
        st.integers(-(10**12), 10**12),
        st.integers(-(10**12), 10**12),
    ),
    # NaN scales: a well-formed affine header whose body holds NaN metadata
    st.just("nan-scales"),
)


@FUZZ
@given(entries=ADVERSARIAL, body_size=st.integers(0, 2048))
def test_adversarial_headers_are_rejected_without_large_allocations(entries, body_size) -> None:
    if entries == "nan-scales":
        blob = bytearray(_blob(codec_spec(4, "channel", "fp32")))
        start = 8 + struct.unpack("<I", blob[4:8])[0]
        blob[start : start + 4] = struct.pack("<f", float("nan"))
        _decode_or_reject(bytes(blob), codec_spec(4, "channel", "fp32"))
        try:
            decode_blob(bytes(blob))
        except CodecError:
            return
        raise AssertionError("NaN scale accepted")
    blob = _container(entries, bytes(body_size))
    for codec in CODECS:
        _decode_or_reject(blob, codec)
    tracemalloc.start()
    try:
        decode_blob(blob)  # even with no expectations to check against
    except CodecError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 8 * MODEL_BYTES + (1 << 20), peak


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    codec=st.sampled_from(CODECS),
    mutation=st.sampled_from(["random", "truncate", "flip", "append"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_aggregate_train_survives_any_payload(codec: str, mutation: str, seed: int) -> None:
    """A fuzzed reply among two good ones: rejected (and the good ones aggregate exactly as
    without it) or, for flips that keep the payload well formed, aggregated to finite values."""
    rng = np.random.default_rng(seed)
    reply = "update" if codec.startswith("topk") else "weights"

    def strategy() -> CompressionStrategy:
        s = CompressionStrategy(
            FedAvg(min_available_nodes=1, min_train_nodes=1), "fp32", codec, reply=reply
        )
        send_round(s, make_arrays(0))
        return s

    def good() -> list:
        return [_message(make_arrays(i, 0.1), codec, reply, src=i) for i in (1, 2)]

    blob = bytearray(_blob(codec, seed=3))
    if mutation == "random":
        blob = bytearray(rng.integers(0, 256, size=int(rng.integers(0, 3000)), dtype=np.uint8))
    elif mutation == "truncate":
        blob = blob[: int(rng.integers(0, len(blob)))]
    elif mutation == "flip":
        for pos in rng.integers(0, len(blob) * 8, size=int(rng.integers(1, 9))):
            blob[pos // 8] ^= 1 << (pos % 8)
    else:
        blob += rng.integers(0, 256, size=int(rng.integers(1, 1 << 16)), dtype=np.uint8).tobytes()
    bad = _message(make_arrays(3), codec, reply, src=9)
    bad.content["arrays"] = blob_to_record(bytes(blob))

    s = strategy()
    arrays, _ = s.aggregate_train(1, [good()[0], bad, good()[1]])
    rejected = s.take_round_metrics()["rejected_replies"]
    got = record_to_numpy(arrays)
    assert all(np.all(np.isfinite(v)) for v in got.values())
    if mutation != "flip":
        assert rejected == 1
    if rejected:
        expected = record_to_numpy(strategy().aggregate_train(1, good())[0])
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value)


def _message(arrays: OrderedDict, codec: str, reply: str, src: int):
    content = RecordDict(
        {"arrays": numpy_to_record(arrays), "metrics": MetricRecord({"num-examples": 5})}
    )
    encoded = encode_content(content, get_codec(codec), make_header(codec, reply=reply))
    assert record_to_blob(encoded["arrays"])  # a real container to start from
    return make_message(encoded, src=src, mid=str(src))


@pytest.mark.parametrize("target", ["decoder", "reply", "run-config", "checkpoint"])
def test_the_atheris_target_replays_its_corpus_and_survives_a_short_seeded_run(
    target: str, tmp_path
) -> None:
    """The committed corpus (``tests/fuzz_corpus``) plus 2,000 coverage-guided inputs, seeded;
    ``make fuzz`` runs the long budget. New inputs go to a scratch folder."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    corpus = root / "tests" / "fuzz_corpus" / target
    assert len(list(corpus.iterdir())) >= 1
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flora_tools.fuzz",
            target,
            "-runs=2000",
            "-seed=1",
            str(tmp_path),
            str(corpus),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # libFuzzer's own count: the budget ran in full (it may add the inputs of its last batch)
    done = re.search(r"^Done (\d+) runs", proc.stderr, flags=re.M)
    assert done and int(done.group(1)) >= 2000, proc.stderr[-3000:]
