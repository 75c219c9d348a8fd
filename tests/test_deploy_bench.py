"""``flora_tools.deploy_bench``'s per-message breakdown is a chain whose steps subtract."""

from __future__ import annotations

from flora_tools.deploy_bench import BREAKDOWN
from flora_tools.preflight import app_defaults


def test_each_step_adds_to_an_earlier_one_and_compiles() -> None:
    seen: list[str] = []
    run = repr(app_defaults())
    for step, (code, after) in BREAKDOWN.items():
        assert after is None or after in seen, f"{step!r} adds to {after!r}, not an earlier step"
        compile(code.format(RUN=run), step, "exec")
        seen.append(step)
    # peft's import is its own step, so the base's row is what building the model costs.
    assert BREAKDOWN["+ the frozen base and its peft adapters"][1] == "+ import peft"
    assert "import peft" in BREAKDOWN["+ import peft"][0]
