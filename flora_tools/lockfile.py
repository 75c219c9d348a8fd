"""requirements.lock, read once: what ``make install``, the images and the tests agree on.

The lock is pip's ``name==version`` format (one pin per line, hashes and comments ignored).
Names are compared in PEP 503's normal form, so ``flwr_datasets`` and ``flwr-datasets`` are one
package whichever way a tool spells it.
"""

from __future__ import annotations

import re
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"

_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)", flags=re.MULTILINE)


def normalise(name: str) -> str:
    """PEP 503's normal form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """``{normalised name: version}`` of every pin in ``lock``."""
    return {normalise(name): pinned for name, pinned in _PIN.findall(lock.read_text())}
