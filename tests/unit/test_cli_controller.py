"""`sluice controller`'s operator-API flags: they land in `Settings.api`, and a configuration that would send bearer
tokens in clear text over the network is refused with one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.cli import UsageError, _parser, controller_settings, main
from rollout.settings import ApiSettings


def _settings(*flags: str) -> ApiSettings:
    api = controller_settings(_parser().parse_args(["controller", *flags])).api
    assert api is not None  # `sluice controller` always serves the API
    return api


def test_api_flags_land_in_the_settings() -> None:
    api = _settings("--api-address", "10.0.0.7", "--api-port", "9443", "--api-tls-cert", "/tls/crt",
                    "--api-tls-key", "/tls/key", "--webhook-secret", "sluice-system/registry-hook")
    assert api == ApiSettings(address="10.0.0.7", port=9443, tls_cert_file="/tls/crt", tls_key_file="/tls/key",
                              webhook_secret="sluice-system/registry-hook")


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_plain_http_on_loopback_is_allowed(address: str) -> None:
    api = _settings("--api-address", address)
    assert (api.address, api.tls_cert_file, api.allow_plain_http) == (address, None, False)


def test_plain_http_on_all_interfaces_needs_asking_for() -> None:
    assert _settings("--api-allow-plain-http").allow_plain_http
    with pytest.raises(UsageError, match="bearer tokens would travel in clear text"):
        _settings()
    with pytest.raises(UsageError, match="clear text"):
        _settings("--api-address", "sluice.example")


def test_tls_cert_and_key_go_together() -> None:
    with pytest.raises(UsageError, match="--api-tls-cert and --api-tls-key go together"):
        _settings("--api-tls-cert", "/tls/crt")
    with pytest.raises(UsageError, match="go together"):
        _settings("--api-tls-key", "/tls/key", "--api-address", "127.0.0.1")


@pytest.mark.parametrize("secret", ["registry-hook", "/registry-hook", "sluice-system/", "a/b/c"])
def test_webhook_secret_wants_namespace_slash_name(secret: str) -> None:
    with pytest.raises(UsageError, match="NAMESPACE/NAME"):
        _settings("--api-address", "127.0.0.1", "--webhook-secret", secret)


def test_the_controller_refuses_plain_http_on_all_interfaces(kubeconfig: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["controller", "--kubeconfig", str(kubeconfig), "--api-address", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sluice: refusing to serve the API on 0.0.0.0 without TLS: bearer tokens would travel")
    assert err.count("\n") == 1
