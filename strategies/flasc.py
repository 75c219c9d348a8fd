"""FLASC (Kuo et al., 2024): dense local LoRA training, sparse communication.

The server keeps a dense global adapter. It broadcasts one global top-k by magnitude at
``density_down``; clients train densely from it and send a global top-k of their update at
``density_up``; each update is added to the dense global (so the inner strategy sees plain
weights) and a server optimizer steps on the mean of the sparse updates. Evaluation messages
carry the dense global (fp32), as FLASC evaluates it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from flwr.serverapp.strategy import Strategy

from strategies.aggregation import sampled_aggregator
from strategies.aggregation import server_optimizer as build_server_optimizer
from strategies.choices import NO_COSINE_BOUND
from strategies.codecs import sparse_spec
from strategies.compression import CompressionStrategy
from strategies.privacy import private_round_settings
from strategies.schedules import schedule_factor
from strategies.validation import DEFAULT_MAX_NUM_EXAMPLES


class FLASC(CompressionStrategy):
    """Top-k sparse adapters both ways, a server optimizer on the mean sparse update.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes
        Node sampling, as Flower's ``FedAvg`` (defaults 1.0, 1.0, 2, 2, 2).
    density_up : float (default: 0.1)
        Share of the update's entries each client sends, in (0, 1].
    density_down : float (default: 0.25)
        Share of the global adapters' entries broadcast to training clients, in (0, 1].
    density_up_for_node : Callable[[int], float | None] | None (default: None)
        Heterogeneous devices (FLASC's heterogeneous-density mode): node id -> the uplink
        density that node is asked for (None: ``density_up``); the schedule scales it too.
    density_schedule : str (default: "constant")
        ``constant`` or ``decay:F:N``: both densities times F every N rounds.
    sparsity_scope : str (default: "global")
        One top-k over all tensors flattened together (``global``, FLASC's) or per ``tensor``.
    sparse_value_bits : int (default: 32)
        Width of the kept uplink values: 32 (fp32), 16 (fp16) or 1..8 (affine).
    server_optimizer : str (default: "adam")
        ``adam`` (Flower's FedAdam; FLASC uses AdamW without weight decay here) or ``sgd``
        (Flower's FedAvgM without momentum: lr 1 is FedAvg of the updates).
    server_lr : float (default: 0.05)
        The server optimizer's learning rate.
    server_lr_schedule : str (default: "decay:0.7:5")
        ``constant`` or ``decay:F:N`` for ``server_lr``; the decay offsets the growing step of
        Adam's bias correction over the first rounds.
    server_eps, server_beta1, server_beta2 : float (default: 1e-3, 0.9, 0.999)
        Adam's epsilon (Flower's ``tau``) and betas.
    error_feedback : bool (default: False)
        Clients carry what top-k dropped into their next reply (not in FLASC).
    aggregation : str (default: "mean")
        What the optimizer steps on: the ``mean``, ``median`` or ``trimmed-mean`` of the
        updates, or what ``krum``, ``multi-krum`` or ``bulyan`` make of them (FLASC's is the
        mean).
    trim_fraction, malicious_nodes, multi_krum_select, over_selection, seed, max_num_examples,
    max_update_norm, update_norm_action, min_update_cosine, update_cosine_scope,
    dp_noise_multiplier,
    dp_clipping_norm, dp_clipping, dp_delta, entropy_coder, downlink_delta
        As in ``FedLoRA``.
    strategy : Strategy | None (default: None)
        A Flower strategy to use instead of the server optimizer built from the arguments above.
    """

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        density_up: float = 0.1,
        density_down: float = 0.25,
        density_up_for_node: Callable[[int], float | None] | None = None,
        density_schedule: str = "constant",
        sparsity_scope: str = "global",
        sparse_value_bits: int = 32,
        server_optimizer: str = "adam",
        server_lr: float = 0.05,
        server_lr_schedule: str = "decay:0.7:5",
        server_eps: float = 1e-3,
        server_beta1: float = 0.9,
        server_beta2: float = 0.999,
        error_feedback: bool = False,
        aggregation: str = "mean",
        trim_fraction: float = 0.2,
        malicious_nodes: int = 0,
        multi_krum_select: int = 1,
        strategy: Strategy | None = None,
        over_selection: float = 0.0,
        seed: int | None = None,
        max_num_examples: int = DEFAULT_MAX_NUM_EXAMPLES,
        max_update_norm: float = 0.0,
        update_norm_action: str = "clip",
        min_update_cosine: float = NO_COSINE_BOUND,
        update_cosine_scope: str = "global",
        dp_noise_multiplier: float = 0.0,
        dp_clipping_norm: float = 1.0,
        dp_clipping: str = "server",
        dp_delta: float = 1e-5,
        entropy_coder: str = "none",
        downlink_delta: bool = False,
    ) -> None:
        privacy, max_update_norm, update_norm_action = private_round_settings(
            dp_noise_multiplier,
            dp_clipping_norm,
            dp_delta,
            dp_clipping,
            max_update_norm,
            update_norm_action,
        )
        optimizer = partial(
            build_server_optimizer,
            server_optimizer,
            lr=server_lr,
            lr_schedule=server_lr_schedule,
            eps=server_eps,
            beta1=server_beta1,
            beta2=server_beta2,
        )
        inner = sampled_aggregator(
            strategy,
            aggregation=aggregation,
            trim_fraction=trim_fraction,
            malicious_nodes=malicious_nodes,
            multi_krum_select=multi_krum_select,
            privacy=privacy,
            min_update_cosine=min_update_cosine,
            update_cosine_scope=update_cosine_scope,
            over_selection=over_selection,
            seed=seed,
            build=optimizer,
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
        )
        factor = schedule_factor(density_schedule)

        def codecs_for(server_round: int) -> tuple[str, str]:
            f = factor(server_round)
            return (
                sparse_spec(density_down * f, sparsity_scope, 32),
                sparse_spec(density_up * f, sparsity_scope, sparse_value_bits),
            )

        def uplink_for(server_round: int, node: int) -> str | None:
            density = density_up_for_node(node) if density_up_for_node is not None else None
            if density is None:
                return None
            return sparse_spec(density * factor(server_round), sparsity_scope, sparse_value_bits)

        down, up = codecs_for(1)
        super().__init__(
            inner,
            downlink=down,
            uplink=up,
            reply="update",
            error_feedback=error_feedback,
            evaluate_downlink="fp32",
            codecs_for_round=codecs_for,
            uplink_for_node=uplink_for if density_up_for_node is not None else None,
            max_num_examples=max_num_examples,
            max_update_norm=max_update_norm,
            update_norm_action=update_norm_action,
            entropy_coder=entropy_coder,
            downlink_delta=downlink_delta,
        )
