"""Heterogeneous LoRA ranks (HetLoRA-style): each node trains only the first r of the rank
components, and every component is averaged over the nodes that trained it.

A weak device is asked for rank r below the global rank (``lora-rank`` in its training config);
it is sent only the leading block of each tensor (``strategies.blocks``), trains the truncated
adapter and replies with only the components it trained. The ``CompressionStrategy`` above this
wrapper (told ``node_block`` through its ``set_node_blocks``) cuts the messages to those blocks,
validates each reply against them and puts it back into the global's shapes, so the update
arriving here is zero outside the node's rank. A plain weighted mean would pull the higher
components toward zero by every node that never saw them, so before the inner strategy
aggregates, each reply's update is masked to the entries its rank covers and scaled by the
inverse share of the round's weight that covers each entry:

    u_i' = m_i * u_i * (sum_j w_j) / (sum_j w_j m_j)

so that the inner strategy's weighted mean sum_i w_i u_i' / sum_i w_i is, entry by entry, the
weighted mean over the replies that cover it (entries nobody covered keep the global). That
holds for any inner strategy that is linear in the updates (the mean, and a server optimizer
stepping on it); medians, Krum and DP noise calibrated to a clipped mean are not, and are
refused by the app's configuration check.

The wrapper knows nothing of models: which block of a tensor a rank covers is
``rank_block(name, shape, rank)``, given by the app (it knows LoRA's A and B layouts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.blocks import leading_block
from strategies.chain import Forwarding
from strategies.choices import RANK_KEY
from strategies.wire import numpy_to_record, record_to_numpy

RankBlock = Callable[[str, tuple[int, ...], int], tuple[int, ...]]


class RankTiers(Forwarding):
    """Ask each node for its rank; aggregate every component over the nodes that trained it.

    Parameters
    ----------
    strategy : Strategy
        The strategy that samples and aggregates (linear in the updates).
    rank_for_node : Callable[[int], int | None]
        Node id -> the rank that node trains (None: the full rank).
    rank_block : Callable[[str, tuple[int, ...], int], tuple[int, ...]]
        (tensor name, shape, rank) -> the shape of the leading block that rank covers (the
        whole shape for a tensor without rank components).
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        rank_for_node: Callable[[int], int | None],
        rank_block: RankBlock,
    ) -> None:
        super().__init__(strategy)
        self.rank_for_node = rank_for_node
        self.rank_block = rank_block
        self._global: dict[str, np.ndarray] | None = None
        self._asked: dict[int, int] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = record_to_numpy(arrays)
        self._asked = {}
        per_rank: dict[tuple[int, int], RecordDict] = {}
        out = []
        for msg in self.strategy.configure_train(server_round, arrays, config, grid):
            rank = self.rank_for_node(msg.metadata.dst_node_id)
            if rank is not None:
                self._asked[msg.metadata.dst_node_id] = rank
                key = (id(msg.content), rank)
                if key not in per_rank:  # one content per rank, shared like Flower's own
                    per_rank[key] = _with_rank(msg.content, rank)
                msg.content = per_rank[key]
            out.append(msg)
        return out

    def node_block(self, node: int, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The block of tensor ``name`` that ``node`` was asked for this round: what its reply
        must hold (``CompressionStrategy.set_node_blocks``)."""
        rank = self._asked.get(node)
        return tuple(shape) if rank is None else self.rank_block(name, tuple(shape), rank)

    def _mask(self, node: int, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The entries ``node``'s rank covers, None when it covers the whole tensor."""
        block = self.node_block(node, name, shape)
        if block == tuple(shape):
            return None
        mask = np.zeros(shape, dtype=bool)
        leading_block(mask, block)[...] = True
        return mask

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        if self._global is not None and any(m.metadata.src_node_id in self._asked for m in valid):
            self._rescale(valid)
        return self.strategy.aggregate_train(server_round, replies)

    def _rescale(self, valid: list[Message]) -> None:
        """Replace each valid reply's arrays by the global plus its rescaled masked update."""
        assert self._global is not None
        weights = np.array([_weight(m) for m in valid], dtype=np.float64)
        masks = [
            {
                name: self._mask(msg.metadata.src_node_id, name, value.shape)
                for name, value in self._global.items()
            }
            for msg in valid
        ]
        scale: dict[str, np.ndarray] = {}
        total = weights.sum()
        for name, value in self._global.items():
            coverage = np.zeros(value.shape, dtype=np.float64)
            for w, mask in zip(weights, masks, strict=True):
                coverage += w if mask[name] is None else w * mask[name]
            with np.errstate(divide="ignore"):
                scale[name] = np.where(coverage > 0, total / coverage, 0.0)
        for msg, mask in zip(valid, masks, strict=True):
            key = _arrays_key(msg.content)
            received = record_to_numpy(msg.content[key])
            rescaled = {}
            for name, base in self._global.items():
                update = received[name].astype(np.float64) - base
                if mask[name] is not None:
                    update = update * mask[name]
                rescaled[name] = (base + update * scale[name]).astype(np.float32)
            msg.content[key] = numpy_to_record(rescaled)


def _with_rank(content: RecordDict, rank: int) -> RecordDict:
    """A copy of a training message's content whose config records also carry ``rank``."""
    out = RecordDict()
    for key, record in content.items():
        if isinstance(record, ConfigRecord):
            record = ConfigRecord({**record, RANK_KEY: rank})
        out[key] = record
    return out


def _arrays_key(content: RecordDict) -> str:
    return next(iter(content.array_records))


def _weight(msg: Message) -> float:
    metrics = next(iter(msg.content.metric_records.values()))
    return float(metrics.get("num-examples", 1.0))
