"""Wire codecs: ``{name: ndarray}`` to one compact, self-describing blob and back.

Imports only numpy, zstandard (the entropy stage) and the standard library: no Flower, no
torch, no models. The container format is described in ``container``, the lossless stage in
``entropy``; codec names and their allowed values in ``names``.
"""

from strategies.codecs.container import (
    AffineCodec,
    Codec,
    CodecError,
    EntropyCodec,
    Entry,
    FloatCodec,
    SparseCodec,
    decode_blob,
    entries_of,
    get_codec,
    read_header,
)
from strategies.codecs.names import (
    AFFINE_BITS,
    ENTROPY_CODERS,
    FLOAT_BITS,
    GRANULARITIES,
    METAS,
    SPARSITY_SCOPES,
    VALUE_BITS,
    VECTOR_MODES,
    codec_spec,
    sparse_spec,
    with_entropy,
)

__all__ = [
    "AFFINE_BITS",
    "ENTROPY_CODERS",
    "FLOAT_BITS",
    "GRANULARITIES",
    "METAS",
    "SPARSITY_SCOPES",
    "VALUE_BITS",
    "VECTOR_MODES",
    "AffineCodec",
    "Codec",
    "CodecError",
    "EntropyCodec",
    "Entry",
    "FloatCodec",
    "SparseCodec",
    "codec_spec",
    "decode_blob",
    "entries_of",
    "get_codec",
    "read_header",
    "sparse_spec",
    "with_entropy",
]
