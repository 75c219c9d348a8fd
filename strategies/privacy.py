"""Central differential privacy: where clipping, noise and accounting happen, and the ledger.

A private round, from the reply up: the compression wrapper decodes each reply and clips its
update to ``clipping_norm`` (``max_update_norm``: what travelled is what is clipped, after
sparsification or quantization, as FLASC clips); the aggregator (``DPFedAvg`` and the optimizers
over it, ``strategies.aggregation``) adds Gaussian noise to the uniform mean of the clipped
updates; ``PrivacyAccounting`` (this wrapper, above node sampling, where the population is
seen) composes the round into an RDP accountant. With ``clipping="client"`` clients also clip
before encoding (Flower's ``fixedclipping_mod``, told the norm by the train config as Flower's
client-side wrapper tells it); the server still clips what it decodes, so the bound holds for
every reply whatever a client did.

The accountant is Google's ``dp-accounting`` (the one Flower wraps). Each round is a sample of
n of the N nodes online without replacement, the Gaussian mechanism on the sum with multiplier
``noise_multiplier``, and neighbouring datasets differ in one client's data (replace-one).
Flower's own accountant is not used: it supports fixed clipping without sampling
amplification only.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from strategies.chain import Forwarding
from strategies.choices import CLIPPING_SIDES


class PrivacyAccounting(Forwarding):
    """Count every private release of ``strategy`` in an RDP accountant; ε per round.

    Parameters
    ----------
    strategy : Strategy
        The sampling strategy whose aggregator adds the noise (``DPFedAvg`` and family).
    noise_multiplier : float
        Noise standard deviation over the clipping norm, > 0.
    clipping_norm : float
        The L2 bound of each client's update, > 0.
    delta : float (default: 1e-5)
        The δ at which ε is reported, in (0, 1).
    clipping : str (default: "server")
        ``server``: clipping on the decoded replies only; ``client``: clients clip too.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        delta: float = 1e-5,
        clipping: str = "server",
    ) -> None:
        if not noise_multiplier > 0.0 or not clipping_norm > 0.0 or not 0.0 < delta < 1.0:
            raise ValueError(
                f"noise_multiplier = {noise_multiplier!r}, clipping_norm = {clipping_norm!r}, "
                f"delta = {delta!r}: expected > 0, > 0 and in (0, 1)"
            )
        if clipping not in CLIPPING_SIDES:
            raise ValueError(
                f"clipping = {clipping!r}: expected one of {', '.join(CLIPPING_SIDES)}"
            )
        import dp_accounting  # imported here: only private runs need it
        from dp_accounting import rdp

        self._dp = dp_accounting
        self.accountant = rdp.RdpAccountant(
            neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
        )
        super().__init__(strategy)
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.delta = delta
        self.clipping = clipping
        self.releases = 0
        self._round: tuple[int, int] | None = None  # (population, sample) configured this round
        self._metrics: dict[str, float] = {}

    def event(self, population: int, sample: int):  # type: ignore[no-untyped-def]
        """The dp-accounting event of one round: n of N sampled, Gaussian on the sum."""
        gaussian = self._dp.GaussianDpEvent(self.noise_multiplier)
        if sample >= population:
            return gaussian
        return self._dp.SampledWithoutReplacementDpEvent(population, sample, gaussian)

    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(self.delta)) if self.releases else 0.0

    def take_round_metrics(self) -> dict[str, float]:
        """``dp_epsilon`` (cumulative, at ``delta``) after this round."""
        out, self._metrics = self._metrics, {}
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.clipping == "client":  # what Flower's client-side wrapper tells fixedclipping_mod
            config = ConfigRecord({**config, KEY_CLIPPING_NORM: self.clipping_norm})
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        # The population the sample was drawn from: the sampler's own count when it has one.
        sampled_from = getattr(self.strategy, "population", {}).get("train")
        population = len(list(grid.get_node_ids())) if sampled_from is None else sampled_from
        self._round = (population, len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is not None and self._round is not None:
            self.accountant.compose(self.event(*self._round))
            self.releases += 1
            population, sample = self._round
            self._metrics.update({"dp_population": population, "dp_sample": sample})
        self._round = None
        self._metrics["dp_epsilon"] = self.epsilon()
        return arrays, metrics

    def replay(self, rounds: Iterable[dict]) -> None:
        """Compose the releases a resumed run made before (their ``dp_population`` and
        ``dp_sample`` in ``rounds.jsonl``), so ε continues instead of restarting."""
        for record in rounds:
            if "dp_population" in record and "dp_sample" in record:
                self.accountant.compose(
                    self.event(int(record["dp_population"]), int(record["dp_sample"]))
                )
                self.releases += 1


def private_round_settings(
    noise_multiplier: float,
    clipping_norm: float,
    delta: float,
    clipping: str,
    max_update_norm: float,
    update_norm_action: str,
) -> tuple[dict[str, object] | None, float, str]:
    """(``PrivacyAccounting`` keywords or None, the update bound, its action) for a strategy:
    under DP the compression wrapper clips every decoded reply to ``clipping_norm``."""
    if noise_multiplier < 0.0:
        raise ValueError(f"dp_noise_multiplier = {noise_multiplier!r}: expected >= 0")
    if noise_multiplier == 0.0:
        return None, max_update_norm, update_norm_action
    if max_update_norm > 0.0:
        raise ValueError(
            f"max_update_norm = {max_update_norm!r} with DP: dp_clipping_norm already bounds "
            "every update; set one of them"
        )
    privacy = {
        "noise_multiplier": noise_multiplier,
        "clipping_norm": clipping_norm,
        "delta": delta,
        "clipping": clipping,
    }
    return privacy, clipping_norm, "clip"
