"""What the median-direction filter (``min-update-cosine``) sees of an attack, on one round of
real replies: each reply's cosine with a reference, over the whole update, over the classifier
head alone and over the rest.

The nodes that seed S's run of configuration NAME samples in round 1 train through the real
ClientApp (``flora_tools.defence_probe.round_updates``), the attack included: partitions below
``byzantine-clients`` negate their update (``sign-flip``) or train on flipped labels
(``label-flip``). Each update's cosine is printed against the median of all the updates (what
the filter uses), against the median of the others, and as its mean cosine with the others. The
head is the module of the tensor holding most of the updates' squared norm (``_fc`` here, as
``defence_probe``'s ``top_tensor``). Outputs beside this file, ``attack_cosines-seed2-NAME.txt``:

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/defence-probe/attack_cosines.py 2 \\
        effnet-pt-fedlora-sign-flip20-mean

A third argument, a run folder, starts from its final checkpoint instead: the round after its
last, late in training (``...-late.txt``):

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/defence-probe/attack_cosines.py 2 \\
        effnet-pt-fedlora-sign-flip20-mean \\
        benchmarks/cpu-fmnist-attacks-pt/runs/effnet-pt-fedlora-sign-flip20-mean-cos0-s2
"""

import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

from flora_app.attacks import is_attacker
from flora_app.checkpoint import load_checkpoint
from flora_tools.bench import PRESETS, select
from flora_tools.defence_probe import _cosine, _flat, _top_tensor, round_updates
from flora_tools.preflight import app_defaults
from strategies.direction_filter import tensor_median_cosines


def _rows(updates: list[OrderedDict[str, np.ndarray]], keys: list[str]) -> np.ndarray:
    """One row per update: its tensors ``keys``, flattened as ``defence_probe`` flattens."""
    return np.stack([_flat(OrderedDict((k, u[k]) for k in keys)) for u in updates])


def main(seed: int, name: str, start: Path | None = None) -> None:
    preset = PRESETS["cpu-fmnist-attacks-pt"]
    (config,) = select(name, preset.sweep)
    run_config = {**app_defaults(), **preset.run_config, **config.keys, "seed": seed}
    checkpoint = None if start is None else load_checkpoint(start)
    server_round, partitions, updates = round_updates(run_config, preset.supernodes, checkpoint)
    print(f"round {server_round}")
    attacker = [is_attacker(p, int(run_config["byzantine-clients"])) for p in partitions]
    top, _ = _top_tensor(updates)
    module = top.rsplit(".", 1)[0]
    head = [k for k in updates[0] if k.rsplit(".", 1)[0] == module]
    parts = {
        "whole update": list(updates[0]),
        f"head ({', '.join(head)})": head,
        "the rest": [k for k in updates[0] if k not in head],
    }
    for label, keys in parts.items():
        rows = _rows(updates, keys)
        median = np.median(rows, axis=0)
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        pairs = unit @ unit.T
        print(f"{label}:")
        for k, partition in enumerate(partitions):
            others = np.median(np.delete(rows, k, 0), axis=0)
            mean_pair = (pairs[k].sum() - 1) / (len(rows) - 1)
            print(
                f"  partition {partition:3d} attacker={attacker[k]!s:5} "
                f"norm {np.linalg.norm(rows[k]):.3f}  median {_cosine(rows[k], median):+.3f}  "
                f"loo-median {_cosine(rows[k], others):+.3f}  mean-pair {mean_pair:+.3f}"
            )
    per_tensor = {k: _rows(updates, [k]) for k in updates[0]}
    # The "median" column is the filter's own figure (update-cosine-scope='tensor'), which
    # leaves out tensors the median or the reply did not move; loo-median and the negative
    # share count every tensor.
    filtered = tensor_median_cosines(
        _rows(updates, list(updates[0])), [u.size for u in updates[0].values()]
    )
    medians = {k: np.median(r, axis=0) for k, r in per_tensor.items()}
    print(f"median over the {len(per_tensor)} tensors of each tensor's cosine:")
    for i, partition in enumerate(partitions):
        to_median = [_cosine(r[i], medians[k]) for k, r in per_tensor.items()]
        to_others = [
            _cosine(r[i], np.median(np.delete(r, i, 0), axis=0)) for r in per_tensor.values()
        ]
        print(
            f"  partition {partition:3d} attacker={attacker[i]!s:5} "
            f"median {filtered[i]:+.3f}  loo-median {np.median(to_others):+.3f}  "
            f"negative tensors {np.mean(np.array(to_median) < 0):.2f}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]) if len(sys.argv) > 3 else None)
