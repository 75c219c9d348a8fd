"""A strategy wrapper that puts any Flower strategy's messages through wire codecs.

The same shape as Flower's ``DifferentialPrivacyClientSideFixedClipping``: it holds an inner
strategy, lets it sample nodes and aggregate, and only transforms what crosses the wire. The
client-side twin is ``strategies.mod.compression_mod``.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.codecs import CodecError, get_codec
from strategies.wire import decode_content, encode_content


class CompressionStrategy(Strategy):
    """Encode the downlink with ``downlink``, ask clients to reply in ``uplink``, decode replies.

    Replies that do not decode (wrong codec, malformed payload) become error replies, which the
    inner strategy already skips and logs with the node id.
    """

    def __init__(self, strategy: Strategy, downlink: str = "fp32", uplink: str = "fp32") -> None:
        self.strategy = strategy
        self.downlink = get_codec(downlink)
        self.uplink = get_codec(uplink).name
        self._round_metrics: dict[str, float] = {}
        self._evaluate_contents: list[RecordDict] = []

    def take_round_metrics(self) -> dict[str, float]:
        """Strategy extras of the round so far (aggregated client metrics, failures); resets."""
        out, self._round_metrics = self._round_metrics, {}
        return out

    def take_evaluate_contents(self) -> list[RecordDict]:
        """Contents of this round's valid evaluate replies (for app-level extras); resets."""
        out, self._evaluate_contents = self._evaluate_contents, []
        return out

    def _note(self, prefix: str, metrics: MetricRecord | None) -> None:
        for key, value in (metrics or {}).items():
            if isinstance(value, (int, float)):
                self._round_metrics[f"{prefix}{key.replace('-', '_')}"] = float(value)

    def summary(self) -> None:
        log(INFO, "\t├──> Compression: downlink %s | uplink %s", self.downlink.name, self.uplink)
        self.strategy.summary()

    def _encode(self, messages: Iterable[Message], reply_codec: str | None) -> list[Message]:
        # Inner strategies share one RecordDict across a round's messages: encode it once.
        encoded: dict[int, RecordDict] = {}
        out = []
        for msg in messages:
            key = id(msg.content)
            if key not in encoded:
                encoded[key] = encode_content(msg.content, self.downlink, reply_codec)
            msg.content = encoded[key]
            out.append(msg)
        return out

    def _decode(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        out = []
        for msg in replies:
            if msg.has_error():
                out.append(msg)
                continue
            try:
                msg.content = decode_content(msg.content, expected_codec=self.uplink)
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
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        return self._encode(messages, reply_codec=self.uplink)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        decoded = self._decode(server_round, replies)
        self._round_metrics["failed_replies"] = sum(m.has_error() for m in decoded)
        arrays, metrics = self.strategy.aggregate_train(server_round, decoded)
        self._note("client_", metrics)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        return self._encode(messages, reply_codec=None)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self._evaluate_contents = [m.content for m in replies if not m.has_error()]
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        self._note("client_", metrics)
        return metrics
