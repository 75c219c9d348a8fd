"""FLoCoRA (Grativol Ribeiro et al., EUSIPCO 2024): LoRA adapters aggregated by FedAvg (or any
FedAvg-family rule: the method is aggregation-agnostic), with affine b-bit quantized messages.

The paper quantizes the uplink only and sends fp32 back; ``quant_bits_down`` quantizes the
broadcast too. Unlike the authors' simulation, the codes are really bit-packed and the bytes
are what Flower sends.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import Strategy

from strategies.aggregation import sampled_aggregator
from strategies.choices import NO_COSINE_BOUND
from strategies.codecs import codec_spec
from strategies.compression import CompressionStrategy
from strategies.privacy import private_round_settings
from strategies.validation import DEFAULT_MAX_NUM_EXAMPLES


class FLoCoRA(CompressionStrategy):
    """Federated averaging of LoRA adapters sent as affine b-bit codes.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes
        Node sampling, as Flower's ``FedAvg`` (defaults 1.0, 1.0, 2, 2, 2).
    quant_bits : int (default: 8)
        Uplink value width: 1..8 (affine), 16 (fp16) or 32 (fp32).
    quant_bits_down : int (default: 32)
        Downlink value width, as ``quant_bits``; 32 is the paper's fp32 broadcast.
    quant_bits_for_node : Callable[[int], int | None] | None (default: None)
        Heterogeneous devices: node id -> the uplink width that node is asked for (None:
        ``quant_bits``).
    uplink_budget_bytes : int (default: 0)
        Adaptive precision: the bytes an uplink message may take; each tensor then gets its
        own width in 1..``quant_bits``, for the least squared error that fits
        (``strategies.codecs.allocate``). 0: ``quant_bits`` for every tensor.
    quant_granularity : str (default: "channel")
        One scale and offset per output channel (``channel``, the paper's) or per tensor.
    quant_meta : str (default: "fp16")
        Dtype of the scales and offsets on the wire: ``fp16`` or ``fp32`` (the paper counts 32).
    quant_vectors : str (default: "fp32")
        1-D tensors (norm weights, biases): ``fp32`` as the paper, or ``quant``: quantized per
        tensor at the same width, both directions. Under ``lora-norm-head`` on EfficientNet-Lite0
        they are 41 % of a 4-bit message.
    reply : str (default: "update")
        Clients quantize their ``update`` (trained minus received) or the trained ``weights``
        (the paper's). An update has a smaller range, so the same bits lose less.
    error_feedback : bool (default: False)
        Clients carry their quantization residual into their next reply (not in the paper).
    aggregation, trim_fraction, malicious_nodes, multi_krum_select, strategy, over_selection,
    seed, max_num_examples, max_update_norm, update_norm_action, min_update_cosine,
    update_cosine_scope, dp_noise_multiplier, dp_clipping_norm, dp_clipping, dp_delta,
    entropy_coder, downlink_delta
        As in ``FedLoRA``: what combines the dequantized replies, and which replies count.
    """

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        quant_bits: int = 8,
        quant_bits_down: int = 32,
        quant_bits_for_node: Callable[[int], int | None] | None = None,
        uplink_budget_bytes: int = 0,
        quant_granularity: str = "channel",
        quant_meta: str = "fp16",
        quant_vectors: str = "fp32",
        reply: str = "update",
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
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
        )

        def spec(bits: int, budget: int = 0) -> str:
            return codec_spec(bits, quant_granularity, quant_meta, quant_vectors, budget)

        def uplink_for(server_round: int, node: int) -> str | None:
            bits = quant_bits_for_node(node) if quant_bits_for_node is not None else None
            return None if bits is None else spec(bits)

        super().__init__(
            inner,
            downlink=spec(quant_bits_down),
            uplink=spec(quant_bits, uplink_budget_bytes),
            reply=reply,
            error_feedback=error_feedback,
            uplink_for_node=None if quant_bits_for_node is None else uplink_for,
            max_num_examples=max_num_examples,
            max_update_norm=max_update_norm,
            update_norm_action=update_norm_action,
            entropy_coder=entropy_coder,
            downlink_delta=downlink_delta,
        )
