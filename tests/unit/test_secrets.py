"""Secret loading from the environment or a 0600 KEY=VALUE file; every value is redacted."""
from __future__ import annotations

import os

import pytest

from provisioners import redact as redaction
from provisioners import secrets
from provisioners.errors import DeployError


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    redaction._clear_for_tests()
    for name in secrets.KNOWN_SECRETS + (secrets.SECRETS_FILE_ENV,):
        monkeypatch.delenv(name, raising=False)
    yield
    redaction._clear_for_tests()


def _file(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "secrets.env"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_environment_value_is_returned_and_redacted(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "sk-env-value-1")
    assert secrets.get_secret("VLLM_API_KEY") == "sk-env-value-1"
    assert redaction.redact("key=sk-env-value-1") == "key=***"


def test_absent_secret_is_none():
    assert secrets.get_secret("HF_TOKEN") is None


def test_file_values_with_comments_export_and_quotes(tmp_path, monkeypatch):
    path = _file(tmp_path, "# deployer secrets\n\nexport HF_TOKEN='hf_abcdef'\nPROXMOX_PASSWORD=\"pw with spaces\"\n"
                           "VLLM_API_KEY=a=b=c\n")
    monkeypatch.setenv("DEPLOYER_SECRETS_FILE", str(path))
    assert secrets.get_secret("HF_TOKEN") == "hf_abcdef"
    assert secrets.get_secret("PROXMOX_PASSWORD") == "pw with spaces"
    assert secrets.get_secret("VLLM_API_KEY") == "a=b=c"
    assert redaction.redact("pw with spaces / hf_abcdef") == "*** / ***"


def test_environment_wins_over_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYER_SECRETS_FILE", str(_file(tmp_path, "HF_TOKEN=from-file\n")))
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert secrets.get_secret("HF_TOKEN") == "from-env"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_readable_by_others_is_refused_with_chmod_hint(tmp_path, monkeypatch, mode):
    path = _file(tmp_path, "HF_TOKEN=hf_zzzzzz\n", mode)
    monkeypatch.setenv("DEPLOYER_SECRETS_FILE", str(path))
    with pytest.raises(DeployError) as info:
        secrets.get_secret("HF_TOKEN")
    text = str(info.value)
    assert str(path) in text and f"mode {mode:04o}" in text and f"chmod 600 {path}" in text
    assert "hf_zzzzzz" not in text


def test_read_only_owner_file_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYER_SECRETS_FILE", str(_file(tmp_path, "HF_TOKEN=hf_ro_value\n", 0o400)))
    assert secrets.get_secret("HF_TOKEN") == "hf_ro_value"


def test_missing_file_is_a_deploy_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYER_SECRETS_FILE", str(tmp_path / "nope"))
    with pytest.raises(DeployError) as info:
        secrets.get_secret("HF_TOKEN")
    assert "does not exist" in str(info.value)


def test_malformed_line_is_reported_by_number_not_content(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYER_SECRETS_FILE", str(_file(tmp_path, "HF_TOKEN=ok\njust-a-secret-line\n")))
    with pytest.raises(DeployError) as info:
        secrets.get_secret("HF_TOKEN")
    assert "line 2 is not KEY=VALUE" in str(info.value)
    assert "just-a-secret-line" not in str(info.value)


def test_register_env_secrets_returns_names_and_registers_values(tmp_path, monkeypatch):
    monkeypatch.setenv("PROXMOX_TOKEN_SECRET", "11111111-2222-3333-4444-555555555555")
    monkeypatch.setenv("DEPLOYER_SECRETS_FILE", str(_file(tmp_path, "VLLM_API_KEY=sk-file-value\n")))
    assert secrets.register_env_secrets() == ["PROXMOX_TOKEN_SECRET", "VLLM_API_KEY"]
    assert redaction.redact("11111111-2222-3333-4444-555555555555 sk-file-value") == "*** ***"


def test_require_secret_explains_how_to_set_it():
    with pytest.raises(DeployError) as info:
        secrets.require_secret("PROXMOX_TOKEN_SECRET", "the PVE API token login")
    text = str(info.value)
    assert "export PROXMOX_TOKEN_SECRET=" in text and "DEPLOYER_SECRETS_FILE" in text
