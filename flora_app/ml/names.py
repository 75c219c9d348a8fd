"""The choices the model and data code acts on, importable without torch.

The configuration checks run-config values against these before anything starts, also in the
launchers (``make run``, ``make deploy``, ``make bench``), where importing torch, torchvision
and peft would cost seconds. Each module that acts on a choice imports it from here and checks
at import that its own table covers exactly these names.
"""

from __future__ import annotations

# ``dataset`` and ``partitioner`` (``flora_app.ml.data`` loads and splits them).
DATASETS = ("digits", "cifar10", "synthetic", "fashion-mnist")
PARTITIONERS = ("iid", "dirichlet")

# ``model`` (``flora_app.ml.models`` builds them).
MODELS = ("resnet8", "resnet18", "cnn", "mobilenet-v3-small", "efficientnet-lite0")
# ``norm``: BatchNorm, or GroupNorm(2, C) in place of every BatchNorm.
NORMS = ("batch", "group")
# Models that ``build_model(..., pretrained=True)`` can start from published weights.
PRETRAINED_MODELS: tuple[str, ...] = ("efficientnet-lite0",)

# ``lora-mode``: FLoCoRA's placement modes (``flora_app.ml.lora``), the default third.
LORA_MODES = ("lora", "lora-norm", "lora-norm-head", "full-stem")

# ``batchnorm-stats`` (``flora_app.ml.batchnorm``). ``measured``: each round's global model's
# statistics, measured by clients and pooled exactly. ``frozen``: the model's initial
# statistics (a pretrained model's own) serve everywhere, local training included, so every
# client trains and the server evaluates the same function of the weights; non-IID batch
# statistics then neither pull the clients apart nor differ from evaluation's (Zhong et al.,
# 2023, "Making Batch Normalization Great in Federated Deep Learning").
BATCHNORM_STATS = ("measured", "frozen")
