"""Write the configuration reference (``docs/configuration.md``) from the config definitions.

``python -m flora_tools.config_reference`` regenerates it; ``--check`` exits 1 if the committed
file differs (a test runs the same comparison), so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from flora_app.config import SECTIONS, range_text, run_config_key

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "configuration.md"

HEADER = """# Configuration reference

Every run-config key of flora, generated from `flora_app/config.py` by
`python -m flora_tools.config_reference` (a test checks that this file is current). Defaults
live in `pyproject.toml` (`[tool.flwr.app.config]`, checked equal to the ones below); override
any key with `--run-config`, e.g. `make run RUN_CONFIG="strategy='flocora' quant-bits=4"`
(strings in single quotes). Every value is checked before anything starts; a bad one ends the
run with one line naming the key, the value and what is allowed. Unknown keys are refused.
"""


def _default(value: object) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value!r}`"


def _allowed(f: dataclasses.Field) -> str:
    choices, within = f.metadata.get("choices"), f.metadata.get("range")
    if choices is not None:
        return ", ".join(f"`{c}`" for c in choices)
    if within is not None:
        return range_text(f)
    if isinstance(f.default, bool):
        return "`true`, `false`"
    return "a string"


def render() -> str:
    """The whole reference, one table per config section."""
    parts = [HEADER]
    for section in SECTIONS.values():
        parts.append(f"\n## {section.title}\n\n| key | default | allowed | meaning |\n")
        parts.append("| --- | --- | --- | --- |\n")
        for f in dataclasses.fields(section):
            help_text = str(f.metadata.get("help", "")).replace("|", "\\|")
            parts.append(
                f"| `{run_config_key(f.name)}` | {_default(f.default)} | {_allowed(f)} "
                f"| {help_text} |\n"
            )
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is not current")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run python -m flora_tools.config_reference")
            return 1
        return 0
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
