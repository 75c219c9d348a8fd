"""The client-side twin of ``CompressionStrategy``: a Flower mod that speaks the wire codecs.

It decodes whatever arrives into plain fp32 ``ArrayRecord``s, calls the handler, and encodes
the reply the way the message's header asks. Handlers therefore stay as plain as Flower's
quickstart and never see a codec. Messages without a header pass through untouched.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from strategies.codecs import get_codec
from strategies.wire import REPLY_CODEC, decode_content, encode_content, read_header


def compression_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode the payload, run the handler, encode its reply as asked.

    A malformed payload or an unknown codec raises ``CodecError``; Flower turns the exception
    into an error reply, so the server logs it against this node instead of aggregating junk.
    """
    header = read_header(msg.content) if msg.has_content() else None
    if header is None:
        return call_next(msg, context)
    msg.content = decode_content(msg.content)
    reply = call_next(msg, context)
    reply_codec = header.get(REPLY_CODEC)
    if reply.has_error() or not isinstance(reply_codec, str):
        return reply
    reply.content = encode_content(reply.content, get_codec(reply_codec), reply_codec=None)
    return reply
