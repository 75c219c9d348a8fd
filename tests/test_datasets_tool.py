"""flora_tools.datasets: what `make fashion-mnist` does, without touching apt for real."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from flora_app.ml.data import FASHION_MNIST_FILES, DatasetUnavailableError
from flora_tools import datasets as tool

APT_COMMANDS = [
    ["apt-get", "update", "-qq"],
    ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"],
]


def _fill(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        (folder / f"{name}.gz").write_bytes(b"")


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """Debian's folder, moved somewhere this test owns."""
    path = tmp_path / "fashion-mnist"
    monkeypatch.setattr(tool, "FASHION_MNIST_DIR", path)
    return path


@pytest.fixture
def apt(monkeypatch, folder) -> list[list[str]]:
    """Records apt-get calls; the install call "installs" the four files."""
    calls: list[list[str]] = []

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        assert kwargs["env"]["DEBIAN_FRONTEND"] == "noninteractive"
        calls.append(command)
        if command[1] == "install":
            _fill(folder)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(tool.subprocess, "run", run)
    return calls


def test_files_present_need_nothing(folder, apt, monkeypatch) -> None:
    _fill(folder)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert tool.ensure_fashion_mnist() == folder
    assert apt == []


def test_missing_files_as_root_install_debians_package(folder, apt, monkeypatch, capsys) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert tool.main(["fashion-mnist"]) == 0
    assert apt == APT_COMMANDS
    assert str(folder) in capsys.readouterr().out


def test_missing_files_without_root_fail_with_one_line(folder, apt, monkeypatch, capsys) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert tool.main(["fashion-mnist"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "dataset-fashion-mnist" in err and str(folder) in err
    assert apt == []


def test_a_failed_install_is_one_line(folder, monkeypatch, capsys) -> None:
    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        raise subprocess.CalledProcessError(100, command)

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(tool.subprocess, "run", run)
    assert tool.main(["fashion-mnist"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exit status 100" in err and str(folder) in err


def test_an_install_that_leaves_files_missing_is_an_error(folder, monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        tool.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(command, 0)
    )
    with pytest.raises(DatasetUnavailableError, match="dataset-fashion-mnist"):
        tool.ensure_fashion_mnist()
