"""Shared shapes: DeployError text, redaction, plan/operation results, CLI error handling."""
import logging

import pytest

from provisioners import redact as redaction
from provisioners.errors import DeployError
from provisioners.results import Change, OpResult


@pytest.fixture(autouse=True)
def _clean_secrets():
    redaction._clear_for_tests()
    yield
    redaction._clear_for_tests()


def test_deploy_error_lists_command_cause_and_remedy():
    err = DeployError("driver install failed", cause="dkms build failed", remedy="install headers",
                      command="apt-get install -y nvidia-driver-570-open", exit_code=100)
    text = str(err)
    assert text.splitlines() == [
        "driver install failed",
        "  command: apt-get install -y nvidia-driver-570-open (exit 100)",
        "  cause: dkms build failed",
        "  remedy: install headers",
    ]


def test_redact_masks_every_registered_secret_longest_first():
    redaction.register_secret("tok-123456")
    redaction.register_secret("tok-123456-extended")
    assert redaction.redact("a tok-123456-extended b tok-123456") == "a *** b ***"


def test_redact_ignores_short_and_empty_values():
    redaction.register_secret("")
    redaction.register_secret(None)
    redaction.register_secret("ab")
    assert redaction.redact("ab cd") == "ab cd"


def test_redact_bytes_keeps_invalid_utf8():
    redaction.register_secret("s3cr3t-value")
    assert redaction.redact_bytes(b"\xff s3cr3t-value") == b"\xff ***"


def test_logging_filter_redacts_formatted_message(caplog):
    redaction.register_secret("hf_abcdefgh")
    logger = logging.getLogger("test.redact")
    logger.addFilter(redaction.RedactingFilter())
    with caplog.at_level(logging.INFO, logger="test.redact"):
        logger.info("token=%s", "hf_abcdefgh")
    assert "hf_abcdefgh" not in caplog.text
    assert "token=***" in caplog.text


def test_change_and_result_render_for_operators():
    change = Change("refuse", "VM 140", "scsi0.size_gib", 500, 400, "disks are never shrunk")
    assert str(change) == "refuse        VM 140.scsi0.size_gib: 500 -> 400 (disks are never shrunk)"
    result = OpResult("driver", "ok", "nvidia-driver-570-open already installed", 1.25)
    assert not result.changed
    assert str(result) == "ok: nvidia-driver-570-open already installed [driver, 1.2s]"


def test_cli_turns_an_unexpected_exception_into_one_redacted_line(monkeypatch, capsys):
    import types

    from provisioners import cli

    redaction.register_secret("pve-token-secret-value")
    boom = types.SimpleNamespace(
        add_arguments=lambda parser: None,
        run=lambda args: (_ for _ in ()).throw(RuntimeError("failed with pve-token-secret-value")))
    monkeypatch.setitem(cli.COMMANDS, "boom", ("fake.boom", "test"))
    monkeypatch.setattr(cli, "_load", lambda module: boom)
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert "internal error in 'boom': RuntimeError: failed with ***" in err
    assert "pve-token-secret-value" not in err and "Traceback" not in err
