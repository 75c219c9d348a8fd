"""Check a run-config before a launcher starts anything: a typo costs a second, not a minute.

``flwr run`` starts Flower, Ray and a SuperLink before the ServerApp reads its config, so a bad
value used to surface after ~45 s, followed by a traceback. The launchers (``make run``,
``make deploy``, ``make bench``) call ``require_valid_run_config`` first: the same
``FloraConfig`` checks the apps run, on the same merge Flower makes (``pyproject.toml``
defaults, then the overrides, read by Flower's own parser), and one line on stderr when they
fail. Importing this module does not import torch.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def app_defaults(app: Path = ROOT) -> dict[str, Any]:
    """The app's run-config defaults, from its ``pyproject.toml``."""
    data = tomllib.loads((app / "pyproject.toml").read_text())
    return dict(data["tool"]["flwr"]["app"]["config"])


class RunConfigSyntaxError(ValueError):
    """A ``--run-config`` string Flower's parser rejects."""


def parse_run_config(text: str) -> dict[str, Any]:
    """``"k=v k2='s'"`` as Flower parses ``--run-config``; ``RunConfigSyntaxError`` says why
    not, in one line."""
    from flwr.common.config import parse_config_args

    if not text.strip():
        return {}
    try:
        return dict(parse_config_args([text]))
    except Exception as exc:  # click's ClickException for malformed TOML, ValueError for files
        message = getattr(exc, "message", None) or str(exc)
        raise RunConfigSyntaxError(f"run-config {text!r}: {message}") from None


def run_config_problem(overrides: Mapping[str, Any], app: Path = ROOT) -> str | None:
    """The one-line reason the app would refuse ``overrides``; None when it would start."""
    from flora_app.config import ConfigError, FloraConfig

    try:
        FloraConfig.from_run_config({**app_defaults(app), **overrides})
    except ConfigError as exc:
        return str(exc)
    return None


def is_flora_app(app: Path) -> bool:
    """Whether ``app`` is flora (its ``pyproject.toml`` names the project ``flora``); the
    launchers also run other Flower apps, whose keys are not flora's."""
    try:
        data = tomllib.loads((app / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return data.get("project", {}).get("name") == "flora"


def require_valid_run_config(*texts: str, app: Path = ROOT) -> None:
    """Exit with status 2 and one line when the ``--run-config`` strings, applied in order,
    would be refused; parse errors (Flower's) are reported the same way. Another app than
    flora is left to check its own keys."""
    if not is_flora_app(app):
        return
    overrides: dict[str, Any] = {}
    try:
        for text in texts:
            overrides.update(parse_run_config(text))
    except RunConfigSyntaxError as exc:
        _refuse(str(exc))
    problem = run_config_problem(overrides, app)
    if problem:
        _refuse(problem)


def _refuse(line: str) -> None:
    print(f"flora: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)
