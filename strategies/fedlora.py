"""FedLoRA: the dense baseline. Whatever the app exchanges (LoRA adapters, norms and head, or a
whole model) travels as fp32 and is aggregated by any Flower strategy."""

from __future__ import annotations

from flwr.serverapp.strategy import Strategy

from strategies.aggregation import sampled_aggregator
from strategies.choices import NO_COSINE_BOUND
from strategies.compression import CompressionStrategy
from strategies.privacy import private_round_settings
from strategies.validation import DEFAULT_MAX_NUM_EXAMPLES


class FedLoRA(CompressionStrategy):
    """Federated averaging of dense fp32 adapters, with every reply validated.

    Parameters
    ----------
    fraction_train : float (default: 1.0)
        Fraction of nodes used during training, as Flower's ``FedAvg``.
    fraction_evaluate : float (default: 1.0)
        Fraction of nodes used during evaluation, as Flower's ``FedAvg``.
    min_train_nodes : int (default: 2)
        Minimum number of nodes used during training.
    min_evaluate_nodes : int (default: 2)
        Minimum number of nodes used during evaluation.
    min_available_nodes : int (default: 2)
        Minimum number of nodes that must be connected before a round starts.
    aggregation : str (default: "mean")
        ``mean`` (Flower's FedAvg), ``median`` (FedMedian), ``trimmed-mean`` (FedTrimmedAvg),
        ``krum``, ``multi-krum`` or ``bulyan`` (Flower's Krum, MultiKrum, Bulyan).
    trim_fraction : float (default: 0.2)
        Share of replies cut from each tail by ``trimmed-mean``, in [0, 0.5).
    malicious_nodes : int (default: 0)
        The Byzantine replies per round ``krum``, ``multi-krum`` and ``bulyan`` assume (their
        ``num_malicious_nodes``); Bulyan needs at least 4 of them + 3 replies.
    multi_krum_select : int (default: 1)
        How many replies ``multi-krum`` keeps and averages.
    strategy : Strategy | None (default: None)
        Any other Flower strategy to sample and aggregate instead (e.g. ``Krum``); then the
        arguments above that build one are not used and ``aggregation`` must stay ``mean``.
    over_selection : float (default: 0.0)
        Share of extra nodes sampled per training round; the first ``fraction_train``'s worth
        of valid replies in sampling order are aggregated (``strategies.node_sampling``).
    seed : int | None (default: None)
        Seeds which nodes each round samples, from a generator of the strategy's own (Flower's
        global ``random`` is shared with its heartbeat thread). None draws a seed at random.
    max_num_examples : int (default: 1,000,000)
        The largest ``num-examples`` a reply may claim before it is rejected.
    max_update_norm, update_norm_action : float, str (default: 0.0, "clip")
        A bound on each reply's update norm, and whether a longer one is clipped or rejected
        (``CompressionStrategy``).
    min_update_cosine : float (default: -1.0)
        Replies whose update has a cosine below this with the round's coordinate-wise median
        update are dropped (``strategies.direction_filter``): 0 drops sign-flipped updates,
        which a norm bound cannot see; -1 drops none. Not with DP noise.
    update_cosine_scope : str (default: "global")
        What that cosine is over: the whole update (``global``), or each tensor alone, the
        reply's cosine then the median over its tensors (``tensor``).
    dp_noise_multiplier : float (default: 0.0)
        Central DP (``strategies.privacy``) when > 0: every decoded update is clipped to
        ``dp_clipping_norm``, their uniform mean gets Gaussian noise of this multiplier, and
        ε at ``dp_delta`` is accounted per round. Needs ``aggregation="mean"``.
    dp_clipping_norm, dp_clipping, dp_delta : float, str, float (default: 1.0, "server", 1e-5)
        The clipping bound, whether clients clip before encoding too (``client``), and δ.
    entropy_coder : str (default: "none")
        The lossless stage after the codec, both directions: ``none`` or ``zstd``
        (``CompressionStrategy``).
    downlink_delta : bool (default: False)
        Send each training node the change from the copy it holds (``CompressionStrategy``).
    """

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
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
        super().__init__(
            inner,
            "fp32",
            "fp32",
            max_num_examples=max_num_examples,
            max_update_norm=max_update_norm,
            update_norm_action=update_norm_action,
            entropy_coder=entropy_coder,
            downlink_delta=downlink_delta,
        )
