"""The state Flower's server-side optimizers carry between rounds, as flat named arrays.

Flower's ``FedOpt`` family (FedAdam, FedYogi, FedAdagrad) keeps its moments in ``m_t`` / ``v_t``
and ``FedAvgM`` its momentum in ``momentum_vector``; none of them offers a state dict, so a
checkpoint reads and restores those attributes. Everything else they hold is either
configuration or re-set from the global arrays in ``configure_train``.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import Strategy

_DICT_STATES = ("m_t", "v_t")
_LIST_STATES = ("momentum_vector",)


def optimizer_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """``{"<attribute>/<key>": array}`` for every optimizer state the strategy holds."""
    out: dict[str, np.ndarray] = {}
    for attr in _DICT_STATES:
        for key, value in (getattr(strategy, attr, None) or {}).items():
            out[f"{attr}/{key}"] = np.asarray(value)
    for attr in _LIST_STATES:
        for i, value in enumerate(getattr(strategy, attr, None) or []):
            out[f"{attr}/{i}"] = np.asarray(value)
    return out


def load_optimizer_state(strategy: Strategy, arrays: dict[str, np.ndarray]) -> None:
    """Put ``optimizer_state``'s arrays back; attributes the strategy lacks are an error."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for name, value in arrays.items():
        attr, _, key = name.partition("/")
        if attr not in _DICT_STATES + _LIST_STATES or not hasattr(strategy, attr):
            raise ValueError(
                f"checkpoint holds optimizer state {attr!r}, "
                f"which {type(strategy).__name__} does not have"
            )
        grouped.setdefault(attr, {})[key] = np.array(value)
    for attr, values in grouped.items():
        if attr in _LIST_STATES:
            setattr(strategy, attr, [values[str(i)] for i in range(len(values))])
        else:
            setattr(strategy, attr, values)
