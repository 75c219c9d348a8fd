"""The ``strategy`` run-config key -> one of the strategy classes, built from the config.

The only place where the app names strategies: each builder passes the config's sections to the
class's keyword arguments, so a reader sees exactly which class runs with which settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flora_app.config import STRATEGIES, FloraConfig
from flora_app.ml.lora import rank_block
from strategies import FLASC, CompressionStrategy, FedLoRA, FLoCoRA
from strategies.rank_tiers import RankTiers


def _sampling(cfg: FloraConfig) -> dict[str, Any]:
    """Node sampling, seeded by the run's seed: as few as one node may train or evaluate;
    rounds wait for two online."""
    return {
        "seed": cfg.run.seed,
        "fraction_train": cfg.run.fraction_train,
        "fraction_evaluate": cfg.run.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 2,
    }


def _replies(cfg: FloraConfig) -> dict[str, Any]:
    """Which replies count and how messages travel, the same for every strategy."""
    r = cfg.robustness
    return {
        "aggregation": r.aggregation,
        "trim_fraction": r.trim_fraction,
        "malicious_nodes": r.malicious_nodes,
        "multi_krum_select": r.multi_krum_select,
        "over_selection": r.over_selection,
        "max_num_examples": r.max_num_examples,
        "max_update_norm": r.max_update_norm,
        "update_norm_action": r.update_norm_action,
        "min_update_cosine": r.min_update_cosine,
        "update_cosine_scope": r.update_cosine_scope,
        "dp_noise_multiplier": cfg.privacy.dp_noise_multiplier,
        "dp_clipping_norm": cfg.privacy.dp_clipping_norm,
        "dp_clipping": cfg.privacy.dp_clipping,
        "dp_delta": cfg.privacy.dp_delta,
        "entropy_coder": cfg.compression.entropy_coder,
        "downlink_delta": cfg.compression.downlink_delta,
    }


# What each node is asked to send, by tier (``flora_app.tiers``); None: one uplink for all.
NodeValue = Callable[[int], float | None] | None


def _fedlora(cfg: FloraConfig, tiers: NodeValue = None) -> FedLoRA:
    return FedLoRA(**_sampling(cfg), **_replies(cfg))


def _flocora(cfg: FloraConfig, tiers: NodeValue = None) -> FLoCoRA:
    c = cfg.compression
    return FLoCoRA(
        **_sampling(cfg),
        quant_bits=c.quant_bits,
        quant_bits_for_node=None if tiers is None else _as_int(tiers),
        quant_bits_down=c.quant_bits_down,
        uplink_budget_bytes=c.uplink_budget_bytes,
        quant_granularity=c.quant_granularity,
        quant_meta=c.quant_meta,
        quant_vectors=c.quant_vectors,
        reply="update" if c.quant_update else "weights",
        error_feedback=c.error_feedback,
        **_replies(cfg),
    )


def _flasc(cfg: FloraConfig, tiers: NodeValue = None) -> FLASC:
    c, s = cfg.compression, cfg.server
    return FLASC(
        **_sampling(cfg),
        density_up=c.density_up,
        density_up_for_node=tiers,
        density_down=c.density_down,
        density_schedule=c.density_schedule,
        sparsity_scope=c.sparsity_scope,
        sparse_value_bits=c.sparse_value_bits,
        error_feedback=c.error_feedback,
        server_optimizer=s.server_optimizer,
        server_lr=s.server_lr,
        server_lr_schedule=s.server_lr_schedule,
        server_eps=s.server_eps,
        server_beta1=s.server_beta1,
        server_beta2=s.server_beta2,
        **_replies(cfg),
    )


# fedavg exchanges the whole model through the same dense fp32 strategy as fedlora: what
# differs is the model the app builds (``FloraConfig.use_lora``), not the strategy.
def _as_int(tiers: Callable[[int], float | None]) -> Callable[[int], int | None]:
    """A tier value as a whole number (bits, a rank)."""

    def whole(node: int) -> int | None:
        value = tiers(node)
        return None if value is None else int(value)

    return whole


BUILDERS: dict[str, Callable[[FloraConfig, NodeValue], CompressionStrategy]] = {
    "fedavg": _fedlora,
    "fedlora": _fedlora,
    "flocora": _flocora,
    "flasc": _flasc,
}
assert tuple(BUILDERS) == STRATEGIES, "every strategy choice has exactly one builder"


def build_strategy(
    cfg: FloraConfig, tiers: NodeValue = None, ranks: NodeValue = None
) -> CompressionStrategy:
    """The configured strategy, ready for ``start``; ``tiers`` maps a node to its tier's
    uplink value and ``ranks`` to its LoRA rank (``flora_app.tiers.NodeTiers``) when
    ``tiers`` / ``rank-tiers`` are set. Rank tiers wrap the strategy beneath the codecs, so
    they see decoded replies (``strategies.rank_tiers``)."""
    strategy = BUILDERS[cfg.run.strategy](cfg, tiers)
    if ranks is not None:
        tiers_of_ranks = RankTiers(
            strategy.strategy, rank_for_node=_as_int(ranks), rank_block=rank_block
        )
        strategy.strategy = tiers_of_ranks
        strategy.set_node_blocks(tiers_of_ranks.node_block)
    return strategy
