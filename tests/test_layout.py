"""The layout's promises, checked: what the FAB ships, which package may import which, no
classes made at run time, a short README whose links all resolve."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Top-level module names imported anywhere in ``path`` (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_strategies_never_import_the_app() -> None:
    for path in _modules("strategies"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("flora_app", "flora_tools")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_model_and_data_code_knows_nothing_of_the_wire() -> None:
    for path in _modules("flora_app/ml"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("strategies", "flwr")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_codecs_import_only_numpy_zstandard_and_the_standard_library() -> None:
    # zstandard: the entropy stage's compressor; nothing of Flower, torch or the models
    allowed = {"numpy", "zstandard", "strategies", "__future__", *sys.stdlib_module_names}
    for path in _modules("strategies/codecs"):
        bad = {m for m in _imports(path) if m.split(".")[0] not in allowed}
        bad |= {m for m in _imports(path) if m.startswith("strategies.") and ".codecs" not in m}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_client_app_imports_no_strategy_class() -> None:
    """The ClientApp (and the config it reads) knows codecs only through compression_mod."""
    for name in ("client_app.py", "config.py", "task.py", "chaos.py"):
        imported = _imports(ROOT / "flora_app" / name)
        strategy_modules = {m for m in imported if m.startswith("strategies")} - {
            "strategies.mod",
            "strategies.wire",
            "strategies.blocks",
            "strategies.codecs",
            "strategies.codecs.names",
            "strategies.schedules",
            "strategies.choices",
        }
        assert not strategy_modules, f"flora_app/{name} imports {sorted(strategy_modules)}"
        assert "flora_app.strategy_factory" not in imported
        assert "flora_app.node_order" not in imported  # server-side grid code


def test_no_class_is_created_with_type_at_run_time() -> None:
    for path in [*_modules("strategies"), *_modules("flora_app")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "type"
                and len(node.args) == 3
            ):
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} builds a class with type()")


def test_the_fab_ships_only_the_app_and_the_strategies(tmp_path: Path) -> None:
    """``flwr build`` (what ``flwr run`` ships) packs flora_app/ and strategies/ code only."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "home"), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    flwr = Path(sys.executable).parent / "flwr"
    proc = subprocess.run(
        [str(flwr), "build", "--app", str(ROOT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (fab,) = tmp_path.glob("*.fab")
    names = set(zipfile.ZipFile(fab).namelist()) - {".info/CONTENT", "pyproject.toml"}
    assert names, "empty FAB"
    stray = sorted(n for n in names if not re.match(r"^(flora_app|strategies)/.+\.py$", n))
    assert not stray, f"the FAB carries {stray}"
    shipped = {str(p.relative_to(ROOT)) for p in [*_modules("flora_app"), *_modules("strategies")]}
    assert names == shipped, f"missing from the FAB: {sorted(shipped - names)}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s#]+)(?:#[^)]*)?\)")


def test_the_readme_is_short_and_every_local_link_resolves() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 200
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert {p.name for p in docs} >= {
        "configuration.md",
        "design.md",
        "results.md",
        "benchmark.md",
        "deployment.md",
        "robustness.md",
    }
    for page in [readme, *docs]:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
    linked = set(LINK.findall(readme.read_text()))
    for page in docs:
        assert f"docs/{page.name}" in linked, f"the README does not link docs/{page.name}"


RUN_EXAMPLE = re.compile(r"make (?:run|deploy|bench)[^\n]*?RUN_CONFIG=\"([^\"]*)\"")


def test_every_run_config_example_in_the_docs_would_start() -> None:
    """The README's and docs' ``make run RUN_CONFIG="..."`` lines are checked like a user's."""
    from flora_tools.preflight import parse_run_config, run_config_problem

    examples = [
        (page.name, text)
        for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for text in RUN_EXAMPLE.findall(page.read_text())
    ]
    assert len(examples) >= 8
    for name, text in examples:
        # placeholders: "key=value", "...", "<folder>", "seed=S"
        if "..." in text or "<" in text or "key=value" in text or re.search(r"=[A-Z]\b", text):
            continue
        assert run_config_problem(parse_run_config(text)) is None, (name, text)
