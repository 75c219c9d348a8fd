"""Which reference the median-direction filter (``min-update-cosine``) should judge by, on one
round of real replies.

The nodes that seed S's run samples in round 1 train through the real ClientApp
(``flora_tools.defence_probe.round_updates``); the attackers' updates (partitions < 20, as
``byzantine-clients=20``) are negated; each update's cosine is printed against the median of
all the updates (what the filter uses), against the median of the others, and as its mean
cosine with the others. Output: ``flip_cosines-seed2-fedlora.txt`` beside this file.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/defence-probe/flip_cosines.py 2 \\
        effnet-pt-fedlora
"""

import sys

import numpy as np

from flora_tools.bench import PRESETS, select
from flora_tools.defence_probe import _cosine, _flat, round_updates
from flora_tools.preflight import app_defaults

ATTACKERS = 20


def main(seed: int, name: str) -> None:
    preset = PRESETS["cpu-fmnist-attacks-pt"]
    (config,) = select(name, preset.sweep)
    run_config = {**app_defaults(), **preset.run_config, **config.keys, "seed": seed}
    _, partitions, updates = round_updates(run_config, preset.supernodes)
    flat = np.stack([_flat(u) for u in updates])
    attacker = np.array([p < ATTACKERS for p in partitions])
    flat[attacker] *= -1
    median = np.median(flat, axis=0)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    pairs = unit @ unit.T
    for k, partition in enumerate(partitions):
        others = np.median(np.delete(flat, k, 0), axis=0)
        mean_pair = (pairs[k].sum() - 1) / (len(flat) - 1)
        print(
            f"partition {partition:3d} attacker={attacker[k]!s:5} "
            f"median {_cosine(flat[k], median):+.3f}  loo-median {_cosine(flat[k], others):+.3f}  "
            f"mean-pair {mean_pair:+.3f}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
