"""A strategy wrapper that puts any Flower strategy's messages through wire codecs.

The same shape as Flower's ``DifferentialPrivacyClientSideFixedClipping``: it holds an inner
strategy, lets it sample nodes and aggregate, and only transforms what crosses the wire. The
client-side twin is ``strategies.mod.compression_mod``.

Down: the inner strategy's messages get their ArrayRecords encoded once per round with the
downlink codec. Up: each reply is decoded (checking codec, names and shapes against what was
sent); an update is added to the server's dense global adapters, as FLASC does, so the inner
strategy always aggregates plain weights and a lossy downlink never accumulates its error into
the global model.

Every training reply is validated before the inner strategy sees it (``strategies.validation``
plus the codec's own checks); one that fails becomes an error reply, which Flower's strategies
skip, so the aggregate of the others is exactly what it would have been without it.

It does this one job. Node sampling and over-selection (``strategies.node_sampling``), a
resumed run's round numbering (``strategies.round_offset``) and the server optimizer's
checkpoint state (``strategies.optimizer_state``) are their own pieces, composed around or
beneath it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.differential_privacy import clip_inputs_inplace, get_norm

from strategies.blocks import BlockShape, leading_block, leading_blocks, with_block
from strategies.choices import UPDATE_NORM_ACTIONS
from strategies.codecs import Codec, CodecError, decode_blob, get_codec, with_entropy
from strategies.validation import (
    DEFAULT_MAX_NUM_EXAMPLES,
    RejectedReplyError,
    check_finite,
    check_layout,
    check_metrics,
    check_payload_size,
    common_metric_keys,
    only_metric_record,
    rejected_reply,
)
from strategies.wire import (
    HEADER_KEY,
    REPLY,
    REPLY_MODES,
    blob_to_record,
    decode_content,
    encode_content,
    make_header,
    numpy_to_record,
    payload_stats,
    read_header,
    record_to_blob,
    record_to_numpy,
    state_digest,
)


class CompressionStrategy(Strategy):
    """Wrap ``strategy`` so its messages travel through ``downlink`` / ``uplink`` codecs.

    ``reply``: clients send ``weights`` or their ``update`` (trained minus received).
    ``error_feedback``: clients carry their uplink quantization residual to the next round.
    Replies that fail validation become error replies, which the inner strategy skips; each
    is logged with the node and the reason and counted as ``rejected_replies``.

    Parameters
    ----------
    strategy : Strategy
        Any Flower strategy: it samples nodes and aggregates plain fp32 weights.
    downlink : str (default: "fp32")
        Codec name for the global adapters sent to training clients (``strategies.codecs``).
    uplink : str (default: "fp32")
        Codec name the clients must use for their replies.
    reply : str (default: "weights")
        ``weights`` (the trained tensors) or ``update`` (trained minus received).
    error_feedback : bool (default: False)
        Clients carry their uplink compression residual to their next reply.
    evaluate_downlink : str | None (default: None)
        Codec name for evaluation messages; the training downlink when None.
    codecs_for_round : Callable[[int], tuple[str, str]] | None (default: None)
        (downlink, uplink) codec names per round, e.g. a decaying top-k density.
    uplink_for_node : Callable[[int, int], str | None] | None (default: None)
        Heterogeneous devices: the uplink codec name (server round, node id) -> spec that one
        node is asked for, None for the round's common ``uplink``. Each reply is validated
        against what its node was asked for, so a node cannot pick another tier's codec.
    max_num_examples : int (default: 1,000,000)
        The largest ``num-examples`` a reply may claim.
    max_update_norm : float (default: 0.0)
        Bound on the L2 norm (all tensors together) of a reply's update (decoded reply minus
        the global it was sent), 0 for none. Above it a reply is scaled down to the bound
        (``update_norm_action="clip"``) or rejected (``"reject"``); counted either way.
    update_norm_action : str (default: "clip")
        ``clip`` or ``reject``.
    entropy_coder : str (default: "none")
        The lossless stage after every codec, both directions (``strategies.codecs.entropy``):
        ``none`` or ``zstd``.
    downlink_delta : bool (default: False)
        Send each training node the ``downlink``-coded *change* from the copy it holds (kept in
        its ``context.state``) instead of a coded copy of the global: the change has a much
        smaller range, so the same bits lose far less, and the coding error of one round is
        sent again in the next change instead of staying in the node's copy. The server keeps
        a bit-exact mirror of each node's copy (``MAX_MIRRORED_NODES``, least recently sampled
        dropped first) and names it by digest in the header; a node whose copy differs (a
        restarted SuperNode) answers with an error, and a node without a mirror gets a full
        copy (the change from zeros), or, once :meth:`set_delta_origin` gave the adapters every
        node can rebuild before its first message, the change from those. Evaluation messages
        are sent as without it.
    """

    # The mirrors of what nodes hold cost one adapter copy each on the server (a few MB for
    # the pretrained EfficientNet-Lite0's adapters); beyond this many, the least recently
    # sampled node gets a full copy when it is next sampled.
    MAX_MIRRORED_NODES = 1000

    def __init__(
        self,
        strategy: Strategy,
        downlink: str = "fp32",
        uplink: str = "fp32",
        reply: str = "weights",
        error_feedback: bool = False,
        evaluate_downlink: str | None = None,
        codecs_for_round: Callable[[int], tuple[str, str]] | None = None,
        uplink_for_node: Callable[[int, int], str | None] | None = None,
        max_num_examples: int = DEFAULT_MAX_NUM_EXAMPLES,
        max_update_norm: float = 0.0,
        update_norm_action: str = "clip",
        entropy_coder: str = "none",
        downlink_delta: bool = False,
    ) -> None:
        if reply not in REPLY_MODES:
            raise ValueError(f"reply = {reply!r}: expected one of {', '.join(REPLY_MODES)}")
        if not max_update_norm >= 0.0 or update_norm_action not in UPDATE_NORM_ACTIONS:
            raise ValueError(
                f"max_update_norm = {max_update_norm!r}, update_norm_action = "
                f"{update_norm_action!r}: expected >= 0 and one of "
                f"{', '.join(UPDATE_NORM_ACTIONS)}"
            )
        self.max_update_norm = float(max_update_norm)
        self.update_norm_action = update_norm_action
        self.strategy = strategy
        self.entropy_coder = entropy_coder
        self.downlink = self._codec(downlink)
        # Evaluation messages may travel denser than training ones (FLASC evaluates the dense
        # global model); by default they use the training downlink.
        self.evaluate_downlink = self._codec(evaluate_downlink or downlink)
        self.uplink_codec = self._codec(uplink)
        self.uplink = self.uplink_codec.spec
        self.reply = reply
        # (downlink, uplink) codec names per round, e.g. a decaying top-k density.
        self.codecs_for_round = codecs_for_round
        self.uplink_for_node = uplink_for_node
        self._asked: dict[int, str] = {}  # node id -> the uplink codec asked of it this round
        self.error_feedback = error_feedback
        self.max_num_examples = max_num_examples
        self._global: OrderedDict[str, np.ndarray] | None = None
        self._round_metrics: dict[str, float] = {}
        self._evaluate_contents: list[tuple[int, RecordDict]] = []
        self._payload_seen: dict[str, int] = {}
        self.downlink_delta = downlink_delta
        # node id -> the copy of the global adapters that node holds, bit for bit
        self._mirrors: OrderedDict[int, OrderedDict[str, np.ndarray]] = OrderedDict()
        self._origin: OrderedDict[str, np.ndarray] | None = None
        self._origin_digest = ""
        self._from_origin: set[int] = set()  # sent a change from the origin this round
        self._origin_refused: set[int] = set()  # answered one with an error: zeros from now
        self._node_block: BlockShape | None = None
        # the origin's leading blocks by layout, with their digest (node blocks with a delta)
        self._origin_cuts: dict[tuple, tuple[OrderedDict[str, np.ndarray], str] | None] = {}

    def set_delta_origin(self, arrays: Mapping[str, np.ndarray]) -> None:
        """With ``downlink_delta``: the adapters every node holds before its first message (the
        run's seeded initial ones; ``strategies.mod.make_compression_mod`` on the nodes).

        In cross-device sampling most nodes sampled in a round have never been sampled before;
        a full copy at the downlink's few bits loses what the pretrained or seeded values were
        (a 2-bit copy of EfficientNet-Lite0's adapters and norms scores at chance). The change
        from the origin has the range of what training moved. A node that refuses it (its
        origin differs) gets changes from zeros from then on."""
        self._origin = OrderedDict((k, np.asarray(v, np.float32)) for k, v in arrays.items())
        self._origin_digest = state_digest(self._origin)
        self._origin_cuts = {}

    def set_node_blocks(self, block: BlockShape) -> None:
        """Heterogeneous ranks: ``block(node, name, shape)`` is the leading block of each
        tensor that node trains (``strategies.blocks``). Its training messages carry only those
        blocks of the global (with a downlink delta, the change of them; its first copy the
        origin's blocks). Its reply holds only them too, the rest being what it was sent: a
        reply is validated against its node's blocks, so a node sending more than it was asked
        for is rejected, and is put back into the global's shape before anything aggregates it
        (a zero update, or the global's weights, outside the block)."""
        self._node_block = block

    def first_copy(self, arrays: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        """What a node with no copy yet rebuilds when sent ``arrays`` for training: the quality
        of the broadcast for most nodes of a cross-device round."""
        target = OrderedDict((k, np.asarray(v, np.float32)) for k, v in arrays.items())
        if self.downlink_delta and self._origin is not None and _same_layout(self._origin, target):
            return self._coded_change(self._origin, target)[1]
        return decode_blob(self.downlink.encode(target))

    def _coded_change(
        self, held: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray]
    ) -> tuple[bytes, OrderedDict[str, np.ndarray]]:
        """``target`` as the downlink-coded change from ``held``, and what a node holding
        ``held`` rebuilds from it (the same float32 sum the node computes)."""
        change = OrderedDict((k, (target[k] - held[k]).astype(np.float32)) for k in target)
        blob = self.downlink.encode(change)
        sent = decode_blob(blob)
        return blob, OrderedDict((k, held[k] + sent[k]) for k in target)

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> Compression: downlink %s%s | uplink %s (%s%s)",
            self.downlink.spec,
            " (change from each node's copy)" if self.downlink_delta else "",
            self.uplink,
            self.reply,
            ", error feedback" if self.error_feedback else "",
        )
        self.strategy.summary()

    # --- bookkeeping the ServerApp reads once per round ------------------------------------
    def take_round_metrics(self) -> dict[str, float]:
        """What this wrapper saw this round (failed and rejected replies, payload statistics,
        codec seconds, the aggregated client metrics); resets."""
        out, self._round_metrics = self._round_metrics, {}
        self._payload_seen = {}
        return out

    def take_evaluate_contents(self) -> list[tuple[int, RecordDict]]:
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
    def _encode(
        self, messages: Iterable[Message], train: bool, server_round: int = 0
    ) -> list[Message]:
        started = time.perf_counter()
        # Inner strategies share one RecordDict per round; it is encoded once per uplink asked
        # (and, with node blocks, once per set of blocks).
        encoded: dict[tuple[int, str], RecordDict] = {}
        cut: dict[tuple[int, tuple], RecordDict] = {}
        out = []
        for msg in messages:
            if train and self._node_block is not None:
                msg.content = self._blocks_of(msg.content, msg.metadata.dst_node_id, cut)
            uplink = self.uplink
            if train and self.uplink_for_node is not None:
                node = msg.metadata.dst_node_id
                asked = self.uplink_for_node(server_round, node)
                uplink = self.uplink if asked is None else self._codec(asked).spec
                self._asked[node] = uplink
            if train and self.downlink_delta:
                msg.content = self._encode_change(msg.content, msg.metadata.dst_node_id, uplink)
                out.append(msg)
                continue
            key = (id(msg.content), uplink)
            if key not in encoded:
                encoded[key] = self._encode_content(msg.content, train, uplink)
            msg.content = encoded[key]
            out.append(msg)
        self._add_seconds(time.perf_counter() - started)
        return out

    def _blocks_of(
        self, content: RecordDict, node: int, cut: dict[tuple[int, tuple], RecordDict]
    ) -> RecordDict:
        """``content`` with its adapters cut to the blocks ``node`` trains (itself when they
        are whole); one copy per distinct set of blocks, kept in ``cut``."""
        assert self._node_block is not None
        records = list(content.array_records.items())
        if len(records) != 1:
            return content
        arrays_key, record = records[0]
        shapes = {k: tuple(a.shape) for k, a in record.items()}
        blocks = {k: self._node_block(node, k, shape) for k, shape in shapes.items()}
        if blocks == shapes:
            return content
        key = (id(content), tuple(blocks.values()))
        if key not in cut:
            arrays = record_to_numpy(record)
            out = RecordDict({k: v for k, v in content.items() if k != arrays_key})
            out[arrays_key] = numpy_to_record(
                OrderedDict((k, leading_block(v, blocks[k])) for k, v in arrays.items())
            )
            cut[key] = out
        return cut[key]

    def _codec(self, spec: str) -> Codec:
        """The codec ``spec`` names, with this strategy's entropy stage."""
        return get_codec(with_entropy(spec, self.entropy_coder))

    def _encode_content(self, content: RecordDict, train: bool, uplink: str) -> RecordDict:
        if not train:
            codec = self.evaluate_downlink
            return encode_content(content, codec, make_header(codec.spec))
        out = encode_content(content, self.downlink, self._train_header(uplink))
        for record in out.array_records.values():
            self._note_payload("down_", record)
        return out

    def _train_header(self, uplink: str, **extra: str) -> ConfigRecord:
        """A training message's header: its codec, and how the node must reply."""
        return make_header(
            self.downlink.spec,
            reply_codec=uplink,
            reply=self.reply,
            error_feedback=self.error_feedback,
            **extra,
        )

    def _encode_change(self, content: RecordDict, node: int, uplink: str) -> RecordDict:
        """``content`` for one node, its adapters as the coded change from that node's copy;
        the mirror of the copy becomes what the node will rebuild (the same float32 sum)."""
        records = list(content.array_records.items())
        if len(records) != 1:
            raise ValueError(f"a downlink delta needs one ArrayRecord, found {len(records)}")
        arrays_key, record = records[0]
        target = record_to_numpy(record)
        held = self._mirrors.pop(node, None)
        self._from_origin.discard(node)
        origin = self._origin_like(target) if node not in self._origin_refused else None
        if held is not None and _same_layout(held, target):
            base = state_digest(held)
        elif origin is not None:
            held, base = origin
            self._from_origin.add(node)
        else:
            held, base = OrderedDict((k, np.zeros_like(v)) for k, v in target.items()), ""
        blob, self._mirrors[node] = self._coded_change(held, target)
        while len(self._mirrors) > self.MAX_MIRRORED_NODES:
            self._mirrors.popitem(last=False)
        out = RecordDict({k: v for k, v in content.items() if k != arrays_key})
        out[arrays_key] = blob_to_record(blob)
        out[HEADER_KEY] = self._train_header(uplink, delta_base=base)
        self._note_payload("down_", out[arrays_key])
        return out

    def _origin_like(
        self, target: Mapping[str, np.ndarray]
    ) -> tuple[Mapping[str, np.ndarray], str] | None:
        """The origin and its digest in ``target``'s layout (its leading blocks for a node of a
        smaller rank, as the node cuts its own), or None when there is no origin or it cannot
        be cut to that layout."""
        if self._origin is None:
            return None
        if _same_layout(self._origin, target):
            return self._origin, self._origin_digest
        layout = tuple((k, v.shape) for k, v in target.items())
        if layout not in self._origin_cuts:
            cut = leading_blocks(self._origin, target)
            self._origin_cuts[layout] = None if cut is None else (cut, state_digest(cut))
        return self._origin_cuts[layout]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.codecs_for_round is not None:
            down, up = self.codecs_for_round(server_round)
            self.downlink, self.uplink_codec = self._codec(down), self._codec(up)
            self.uplink = self.uplink_codec.spec
        self._global = record_to_numpy(arrays)  # the dense global, for shapes and updates
        self._asked = {}
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        return self._encode(messages, train=True, server_round=server_round)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        return self._encode(messages, train=False)

    # --- up ------------------------------------------------------------------------------
    def _decode_reply(self, msg: Message) -> RecordDict:
        """The reply as plain fp32 weights; ``RejectedReplyError`` / ``CodecError`` say why not."""
        if self._global is None:
            raise RejectedReplyError("reply to a round this server did not send")
        arrays_key = getattr(self.strategy, "arrayrecord_key", "arrays")
        record, metrics = check_layout(msg.content, arrays_key)
        check_metrics(metrics, self.max_num_examples)
        header = read_header(msg.content)
        mode = header.get(REPLY) if header is not None else None
        if mode != self.reply:
            raise RejectedReplyError(
                f"reply mode {mode!r} differs from the requested {self.reply!r}"
            )
        node = msg.metadata.src_node_id
        shapes = {k: v.shape for k, v in self._global.items()}
        if self._node_block is not None:
            shapes = {k: self._node_block(node, k, shape) for k, shape in shapes.items()}
        asked = self._asked.get(node, self.uplink)
        codec = self.uplink_codec if asked == self.uplink else get_codec(asked)
        check_payload_size(len(record_to_blob(record)), codec, shapes)
        content = decode_content(msg.content, expected_codec=asked, expected_shapes=shapes)
        self._note_payload("up_", record)  # only what decoded: a bound on what it inflates to
        received = record_to_numpy(content[arrays_key])
        check_finite(received)
        if self._node_block is not None:
            received = self._whole(received)
            content[arrays_key] = numpy_to_record(received)
        if self.reply == "update":
            with np.errstate(over="ignore", invalid="ignore"):
                received = OrderedDict((k, self._global[k] + received[k]) for k in self._global)
            check_finite(received)  # a finite update can still overflow the sum
            content[arrays_key] = numpy_to_record(received)
        if self.max_update_norm > 0.0:
            bounded = self._bounded(received)
            if bounded is not received:
                content[arrays_key] = numpy_to_record(bounded)
        return content

    def _whole(self, received: OrderedDict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        """Leading blocks back in the global's shapes: zero outside an update, the global's
        values outside weights (what the node was sent, and did not train). A whole tensor
        (a full-rank node's, a norm's) is kept as it is, not copied."""
        assert self._global is not None
        fill = np.zeros_like if self.reply == "update" else np.asarray
        return OrderedDict(
            (k, received[k] if received[k].shape == g.shape else with_block(fill(g), received[k]))
            for k, g in self._global.items()
        )

    def _bounded(self, received: OrderedDict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        """``received`` with its update (received minus the global) within the norm bound,
        clipped as Flower's DP clips (its ``get_norm`` and ``clip_inputs_inplace``: scaled by
        bound / norm), or ``RejectedReplyError``."""
        assert self._global is not None
        update = [received[k] - self._global[k] for k in self._global]
        norm = get_norm(update)
        if norm <= self.max_update_norm:
            return received
        if self.update_norm_action == "reject":
            raise RejectedReplyError(
                f"update norm {norm:.4g} exceeds max-update-norm {self.max_update_norm:g}"
            )
        self._round_metrics["clipped_replies"] = self._round_metrics.get("clipped_replies", 0) + 1
        clip_inputs_inplace(update, self.max_update_norm)
        return OrderedDict(
            (k, (self._global[k] + u).astype(np.float32))
            for k, u in zip(self._global, update, strict=True)
        )

    def _decode(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        started = time.perf_counter()
        out, rejected = [], 0
        for msg in replies:
            if msg.has_error():
                # Whatever went wrong, that node's copy may not be the mirror any more: it
                # gets a full copy next time (the error may be its report of a lost copy).
                node = msg.metadata.src_node_id
                self._mirrors.pop(node, None)
                if node in self._from_origin:  # perhaps its origin differs: zeros from now
                    self._origin_refused.add(node)
            else:
                try:
                    msg.content = self._decode_reply(msg)
                except (CodecError, RejectedReplyError) as exc:
                    rejected += 1
                    msg = rejected_reply(server_round, msg, str(exc))
            out.append(msg)
        self._round_metrics["rejected_replies"] = float(rejected)
        if self.max_update_norm > 0.0:
            self._round_metrics.setdefault("clipped_replies", 0.0)
        self._add_seconds(time.perf_counter() - started)
        return out

    def _harmonise_metrics(self, server_round: int, valid: list[Message]) -> None:
        """Keep only the metric keys all valid replies share: Flower's strategies stop the
        whole round on differing keys, and an extra client metric is no reason to lose a
        good update."""
        records = [next(iter(m.content.metric_records.items())) for m in valid]
        keys = common_metric_keys([r for _, r in records])
        dropped: set[str] = set()
        for msg, (name, record) in zip(valid, records, strict=True):
            if set(record.keys()) != keys:
                dropped |= set(record.keys()) - keys
                msg.content[name] = MetricRecord({k: v for k, v in record.items() if k in keys})
        if dropped:
            log(
                WARNING,
                "round %d: metrics %s not sent by every client, left out of the aggregate",
                server_round,
                sorted(dropped),
            )

    def _checked_evaluate_reply(self, server_round: int, msg: Message) -> Message:
        """Evaluation replies weigh the clients' metrics by ``num-examples`` too."""
        if msg.has_error():
            return msg
        try:
            check_metrics(only_metric_record(msg.content), self.max_num_examples)
        except RejectedReplyError as exc:
            return rejected_reply(server_round, msg, str(exc))
        return msg

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._round_metrics["failed_replies"] = float(sum(m.has_error() for m in replies))
        decoded = self._decode(server_round, replies)
        self._harmonise_metrics(server_round, [m for m in decoded if not m.has_error()])
        arrays, metrics = self.strategy.aggregate_train(server_round, decoded)
        if arrays is None:
            log(
                WARNING,
                "round %d: no valid reply, the global adapters stay as they were",
                server_round,
            )
        self._note("client_", metrics)
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = [self._checked_evaluate_reply(server_round, m) for m in replies]
        valid = [m for m in replies if not m.has_error()]
        self._harmonise_metrics(server_round, valid)
        self._evaluate_contents = [(m.metadata.src_node_id, m.content) for m in valid]
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        self._note("client_", metrics)
        return metrics


def _same_layout(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """The same tensor names, in the same order, with the same shapes."""
    return [(k, v.shape) for k, v in a.items()] == [(k, v.shape) for k, v in b.items()]
