"""Per-round schedules: one grammar for every knob that changes round by round."""

from __future__ import annotations

from collections.abc import Callable

SCHEDULE_HELP = "constant or decay:F:N (0 < F <= 1, N >= 1), e.g. decay:0.5:10"


def schedule_factor(schedule: str) -> Callable[[int], float]:
    """``constant`` -> 1; ``decay:F:N`` -> F ** ((round - 1) // N): multiplicative decay.

    Used for the top-k densities and the server learning rate alike, so both read the same."""
    if schedule == "constant":
        return lambda _round: 1.0
    try:
        kind, factor_text, every_text = schedule.split(":")
        factor, every = float(factor_text), int(every_text)
    except ValueError:
        kind, factor, every = "", 0.0, 0
    if kind != "decay" or not 0.0 < factor <= 1.0 or every < 1:
        raise ValueError(f"schedule {schedule!r}: expected {SCHEDULE_HELP}")
    return lambda server_round: factor ** ((server_round - 1) // every)
