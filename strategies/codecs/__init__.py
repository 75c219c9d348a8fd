"""Wire codecs: ``{name: ndarray}`` to one compact, self-describing blob and back.

Imports only numpy and the standard library: no Flower, no torch, no models. The container
format is described in ``container``; codec names and their allowed values in ``names``.
"""

from strategies.codecs.container import (
    AffineCodec,
    Codec,
    CodecError,
    Entry,
    FloatCodec,
    SparseCodec,
    decode_blob,
    get_codec,
    read_header,
)
from strategies.codecs.names import (
    AFFINE_BITS,
    FLOAT_BITS,
    GRANULARITIES,
    METAS,
    SPARSITY_SCOPES,
    VALUE_BITS,
    codec_spec,
    sparse_spec,
)

__all__ = [
    "AFFINE_BITS",
    "FLOAT_BITS",
    "GRANULARITIES",
    "METAS",
    "SPARSITY_SCOPES",
    "VALUE_BITS",
    "AffineCodec",
    "Codec",
    "CodecError",
    "Entry",
    "FloatCodec",
    "SparseCodec",
    "codec_spec",
    "decode_blob",
    "get_codec",
    "read_header",
    "sparse_spec",
]
