"""Make sure the offline datasets are on this machine: ``python -m flora_tools.datasets NAME``.

Fashion-MNIST comes from Debian's package dataset-fashion-mnist (the original gzipped idx files
in ``/usr/share/datasets/fashion-mnist``). As root (CI on a fresh machine) a missing package is
installed with apt-get; otherwise the tool prints one line naming the package and the folder and
exits with 1, rather than leaving a later run to fail half-way through its setup.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from flora_app.ml.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_PACKAGE,
    DatasetUnavailableError,
    fashion_mnist_missing,
    fashion_mnist_unavailable,
)

# Quiet, and never a prompt: CI has no terminal to answer debconf.
_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def ensure_fashion_mnist() -> Path:
    """The folder with Fashion-MNIST's four idx files, installing Debian's package if need be.

    Installs only as root (``apt-get update`` then ``apt-get install``); raises
    ``DatasetUnavailableError`` with a one-line message when the files are missing and cannot
    be installed, or are still missing after the install.
    """
    folder = FASHION_MNIST_DIR
    missing = fashion_mnist_missing(folder)
    if not missing:
        return folder
    if os.geteuid() != 0:
        raise fashion_mnist_unavailable(folder, missing)
    env = {**os.environ, **_APT_ENV}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", FASHION_MNIST_PACKAGE],
    ):
        try:
            subprocess.run(command, check=True, env=env)
        except (OSError, subprocess.CalledProcessError) as exc:
            why = f"exit status {exc.returncode}" if hasattr(exc, "returncode") else str(exc)
            raise DatasetUnavailableError(
                f"dataset 'fashion-mnist': `{' '.join(command)}` failed ({why}); install "
                f"Debian's package {FASHION_MNIST_PACKAGE} so that {folder} holds the four "
                "idx files"
            ) from exc
    missing = fashion_mnist_missing(folder)
    if missing:
        raise fashion_mnist_unavailable(folder, missing)
    return folder


_ENSURE = {"fashion-mnist": ensure_fashion_mnist}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(_ENSURE), help="the dataset to make available")
    args = parser.parse_args(argv)
    try:
        folder = _ENSURE[args.dataset]()
    except DatasetUnavailableError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.dataset}: the files are in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
