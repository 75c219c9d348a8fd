"""A simulated clock for training rounds over edge links.

Each valid training reply is timed as it would travel over its node's link
(``strategies.links``): the request and the download of the broadcast, the time on the message
measured by the nodes (their ``client-seconds`` metric, training included; the round's mean,
see below), and the upload of the reply, with the bytes each message took on the wire. The
time goes into the reply's metrics under ``ARRIVAL_KEY``; ``NodeSampling`` beneath this
wrapper then keeps, with over-selection, the first replies in that simulated arrival order
(not in sampling order), and reports the round's simulated seconds: when the last reply it
kept arrived.

Place it beneath the compression wrapper (it reads decoded replies' metrics; the bytes come
from ``bytes_of``, which the app answers from the metered Grid, as Flower serialized them).
It knows nothing of models, datasets or where the links come from: ``link_of`` says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from strategies.chain import Forwarding
from strategies.links import ARRIVAL_KEY, Link

COMPUTE_KEY = "client-seconds"  # what compression_mod measures on the node


class LinkClock(Forwarding):
    """Time each training reply over its node's link.

    Parameters
    ----------
    strategy : Strategy
        The strategy beneath (``NodeSampling`` orders by the times this one sets).
    link_of : Callable[[int], Link | None]
        Node id -> that node's link; None leaves the node's replies untimed.
    bytes_of : Callable[[int], tuple[int, int]]
        Node id -> (bytes sent to it, bytes of its reply) in this round's training exchange.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        link_of: Callable[[int], Link | None],
        bytes_of: Callable[[int], tuple[int, int]],
    ) -> None:
        super().__init__(strategy)
        self.link_of = link_of
        self.bytes_of = bytes_of

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        measured = [
            float(r[COMPUTE_KEY])
            for m in valid
            for r in m.content.metric_records.values()
            if COMPUTE_KEY in r
        ]
        # Every node is charged the round's mean measured time on its message: simulated
        # clients share this machine's cores, so their own times differ by load, not by
        # device; and one shared term keeps the arrival order a function of bytes and links
        # alone, so a run with the clock is still the same run for the same seed.
        compute = float(sum(measured) / len(measured)) if measured else 0.0
        for msg in valid:
            link = self.link_of(msg.metadata.src_node_id)
            if link is None:
                continue
            down, up = self.bytes_of(msg.metadata.src_node_id)
            arrival = link.seconds(down, compute, up)
            for record in msg.content.metric_records.values():  # any claim is replaced
                record[ARRIVAL_KEY] = arrival
        return self.strategy.aggregate_train(server_round, replies)
