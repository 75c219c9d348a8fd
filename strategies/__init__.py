"""flora's Flower strategies and the wire they speak.

Use them from any Flower ServerApp, with ``compression_mod`` on the ClientApp::

    from strategies import FLASC, compression_mod
    strategy = FLASC(fraction_train=0.1, density_up=0.1, density_down=0.25)
    app = ClientApp(mods=[compression_mod])

``FedLoRA`` (dense fp32), ``FLoCoRA`` (affine b-bit) and ``FLASC`` (top-k sparse) are each a
``CompressionStrategy`` around a Flower strategy that samples and aggregates; any Flower
strategy can take that place (``strategy=``), or a robust combiner by name (``aggregation=``).
"""

from strategies.compression import CompressionStrategy
from strategies.fedlora import FedLoRA
from strategies.flasc import FLASC
from strategies.flocora import FLoCoRA
from strategies.mod import compression_mod
from strategies.node_sampling import NodeSampling
from strategies.round_offset import RoundOffset

__all__ = [
    "FLASC",
    "CompressionStrategy",
    "FLoCoRA",
    "FedLoRA",
    "NodeSampling",
    "RoundOffset",
    "compression_mod",
]
