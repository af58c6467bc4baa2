"""`sluice controller` fails fast, with a message and exit code 2, when it has no usable credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.cli import main


def test_missing_kubeconfig_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["controller", "--kubeconfig", "/nonexistent/kubeconfig"]) == 2
    assert "kubeconfig /nonexistent/kubeconfig does not exist" in capsys.readouterr().err


def test_broken_kubeconfig_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [\n")
    assert main(["controller", "--kubeconfig", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"cannot use kubeconfig {broken}" in err
    assert "Traceback" not in err


def test_no_credentials_at_all_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["controller"]) == 2
    assert "pass --kubeconfig or set KUBECONFIG" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
