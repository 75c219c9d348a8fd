"""A strategy wrapper that puts any Flower strategy's messages through wire codecs.

The same shape as Flower's ``DifferentialPrivacyClientSideFixedClipping``: it holds an inner
strategy, lets it sample nodes and aggregate, and only transforms what crosses the wire. The
client-side twin is ``strategies.mod.compression_mod``.

Down: the inner strategy's messages get their ArrayRecords encoded once per round with the
downlink codec. Up: each reply is decoded (checking codec, names and shapes against what was
sent); an update is added to the server's dense global adapters, as FLASC does, so the inner
strategy always aggregates plain weights and a lossy downlink never accumulates its error into
the global model.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.codecs import CodecError, get_codec
from strategies.wire import (
    REPLY,
    REPLY_MODES,
    decode_content,
    encode_content,
    make_header,
    numpy_to_record,
    payload_stats,
    read_header,
    record_to_numpy,
)


class CompressionStrategy(Strategy):
    """Wrap ``strategy`` so its messages travel through ``downlink`` / ``uplink`` codecs.

    ``reply``: clients send ``weights`` or their ``update`` (trained minus received).
    ``error_feedback``: clients carry their uplink quantization residual to the next round.
    Replies that do not decode become error replies, which the inner strategy skips and logs.
    """

    def __init__(
        self,
        strategy: Strategy,
        downlink: str = "fp32",
        uplink: str = "fp32",
        reply: str = "weights",
        error_feedback: bool = False,
        evaluate_downlink: str | None = None,
        codecs_for_round: Callable[[int], tuple[str, str]] | None = None,
    ) -> None:
        if reply not in REPLY_MODES:
            raise ValueError(f"reply = {reply!r}: expected one of {', '.join(REPLY_MODES)}")
        self.strategy = strategy
        self.downlink = get_codec(downlink)
        # Evaluation messages may travel denser than training ones (FLASC evaluates the dense
        # global model); by default they use the training downlink.
        self.evaluate_downlink = get_codec(evaluate_downlink or downlink)
        self.uplink = get_codec(uplink).spec
        self.reply = reply
        # (downlink, uplink) codec names per round, e.g. a decaying top-k density.
        self.codecs_for_round = codecs_for_round
        self.error_feedback = error_feedback
        self._global: OrderedDict[str, np.ndarray] | None = None
        self._round_metrics: dict[str, float] = {}
        self._evaluate_contents: list[RecordDict] = []
        self._payload_seen: dict[str, int] = {}

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> Compression: downlink %s | uplink %s (%s%s)",
            self.downlink.spec,
            self.uplink,
            self.reply,
            ", error feedback" if self.error_feedback else "",
        )
        self.strategy.summary()

    # --- bookkeeping the ServerApp reads once per round ------------------------------------
    def take_round_metrics(self) -> dict[str, float]:
        """Strategy extras of the round so far (aggregated client metrics, failures); resets."""
        out, self._round_metrics = self._round_metrics, {}
        self._payload_seen = {}
        return out

    def take_evaluate_contents(self) -> list[RecordDict]:
        """Contents of this round's valid evaluate replies (for app-level extras); resets."""
        out, self._evaluate_contents = self._evaluate_contents, []
        return out

    def _note(self, prefix: str, metrics: MetricRecord | None) -> None:
        for key, value in (metrics or {}).items():
            if isinstance(value, (int, float)):
                self._round_metrics[f"{prefix}{key.replace('-', '_')}"] = float(value)

    def _note_payload(self, prefix: str, record: ArrayRecord) -> None:
        """Running mean over this round's messages of realised density and index encodings."""
        try:
            stats = payload_stats(record)
        except CodecError:
            return  # the decoder will reject it with the reason
        seen = self._payload_seen.get(prefix, 0) + 1
        self._payload_seen[prefix] = seen
        for key, value in stats.items():
            name = f"{prefix}{key}"
            previous = self._round_metrics.get(name, 0.0)
            self._round_metrics[name] = previous + (value - previous) / seen

    def _add_seconds(self, seconds: float) -> None:
        self._round_metrics["server_codec_seconds"] = (
            self._round_metrics.get("server_codec_seconds", 0.0) + seconds
        )

    # --- down ----------------------------------------------------------------------------
    def _encode(self, messages: Iterable[Message], train: bool) -> list[Message]:
        started = time.perf_counter()
        encoded: dict[int, RecordDict] = {}  # inner strategies share one RecordDict per round
        out = []
        for msg in messages:
            key = id(msg.content)
            if key not in encoded:
                encoded[key] = self._encode_content(msg.content, train)
            msg.content = encoded[key]
            out.append(msg)
        self._add_seconds(time.perf_counter() - started)
        return out

    def _encode_content(self, content: RecordDict, train: bool) -> RecordDict:
        if not train:
            codec = self.evaluate_downlink
            return encode_content(content, codec, make_header(codec.spec))
        header = make_header(
            self.downlink.spec,
            reply_codec=self.uplink,
            reply=self.reply,
            error_feedback=self.error_feedback,
        )
        out = encode_content(content, self.downlink, header)
        for record in out.array_records.values():
            self._note_payload("down_", record)
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.codecs_for_round is not None:
            down, up = self.codecs_for_round(server_round)
            self.downlink, self.uplink = get_codec(down), get_codec(up).spec
        self._global = record_to_numpy(arrays)  # the dense global, for shapes and updates
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        return self._encode(messages, train=True)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        return self._encode(messages, train=False)

    # --- up ------------------------------------------------------------------------------
    def _decode_reply(self, msg: Message) -> RecordDict:
        header = read_header(msg.content)
        mode = header.get(REPLY) if header is not None else None
        if mode != self.reply:
            raise CodecError(f"reply mode {mode!r} differs from the requested {self.reply!r}")
        if self._global is None:
            raise CodecError("reply to a round this server did not send")
        for record in msg.content.array_records.values():
            self._note_payload("up_", record)
        shapes = {k: v.shape for k, v in self._global.items()}
        content = decode_content(msg.content, expected_codec=self.uplink, expected_shapes=shapes)
        if self.reply == "update":
            for key, record in list(content.array_records.items()):
                update = record_to_numpy(record)
                content[key] = numpy_to_record(
                    OrderedDict((k, self._global[k] + update[k]) for k in self._global)
                )
        return content

    def _decode(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        started = time.perf_counter()
        out = []
        for msg in replies:
            if not msg.has_error():
                try:
                    msg.content = self._decode_reply(msg)
                except CodecError as exc:
                    log(
                        WARNING,
                        "round %d: reply from node %d rejected: %s",
                        server_round,
                        msg.metadata.src_node_id,
                        exc,
                    )
                    msg = Message(
                        metadata=msg.metadata,
                        error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)),
                    )
            out.append(msg)
        self._add_seconds(time.perf_counter() - started)
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        decoded = self._decode(server_round, replies)
        self._round_metrics["failed_replies"] = sum(m.has_error() for m in decoded)
        arrays, metrics = self.strategy.aggregate_train(server_round, decoded)
        self._note("client_", metrics)
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self._evaluate_contents = [m.content for m in replies if not m.has_error()]
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        self._note("client_", metrics)
        return metrics
