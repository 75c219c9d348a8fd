"""Wire codecs: a named collection of tensors to a compact payload and back.

This layer knows nothing of Flower or of models: tensors in, numpy arrays out. The Flower side
(``strategies/wire.py``) wraps payloads in an ``ArrayRecord`` and names the codec in the
message, so the receiver decodes whatever arrives without out-of-band knowledge.

Only the identity codec exists so far; quantized and sparse codecs register here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np


class CodecError(ValueError):
    """A payload cannot be encoded or decoded: unknown codec, wrong length, bad values."""


class Codec(ABC):
    """Turns ``{name: tensor}`` into ``{name: wire array}`` and back."""

    name: str

    @abstractmethod
    def encode(self, tensors: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        """The payload to send for these tensors."""

    @abstractmethod
    def decode(self, payload: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        """The tensors a payload stands for; raises ``CodecError`` on a malformed payload."""


class Float32Codec(Codec):
    """Dense fp32, one wire array per tensor: what Flower sends by default, the baseline."""

    name = "fp32"

    def encode(self, tensors: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        return OrderedDict(
            (k, np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()
        )

    def decode(self, payload: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for name, value in payload.items():
            if value.dtype != np.float32:
                raise CodecError(f"fp32 payload tensor {name!r} has dtype {value.dtype}")
            out[name] = value
        return out


_CODECS: dict[str, type[Codec]] = {Float32Codec.name: Float32Codec}


def codec_names() -> tuple[str, ...]:
    """Every codec name a message may carry."""
    return tuple(_CODECS)


def get_codec(name: str) -> Codec:
    """The codec a message names; unknown names are refused, never guessed."""
    try:
        return _CODECS[name]()
    except KeyError:
        raise CodecError(f"unknown codec {name!r}: expected one of {', '.join(_CODECS)}") from None
