"""``python -m provisioners plan|apply|destroy`` command modules against GpuFakePve (credentials from PROXMOX_*)."""
from __future__ import annotations

import pytest

from provisioners.commands import apply as apply_cmd
from provisioners.commands import destroy as destroy_cmd
from provisioners.commands import plan as plan_cmd
from provisioners.errors import DeployError
from tests.conftest import ROOT_PASSWORD, TOKEN_SECRET, writes
from tests.unit.helpers import command_args as _args
from tests.unit.helpers import token_env  # noqa: F401  (pytest fixture)


def test_plan_apply_plan_destroy(token_env, lab_catalog, gpupve, lab_image, capsys):
    path = str(lab_catalog.path)
    assert plan_cmd.run(_args(plan_cmd, path)) == 0
    out = capsys.readouterr().out
    assert "create" in out and "VM 140" in out
    assert writes(gpupve) == []
    assert apply_cmd.run(_args(apply_cmd, path, "--vm", "140")) == 0
    assert "changed" in capsys.readouterr().out
    assert plan_cmd.run(_args(plan_cmd, path)) == 0
    out = capsys.readouterr().out
    assert "No changes." in out and TOKEN_SECRET not in out
    with pytest.raises(DeployError, match="without confirmation"):
        destroy_cmd.run(_args(destroy_cmd, path))
    assert gpupve.vm(140) is not None
    assert destroy_cmd.run(_args(destroy_cmd, path, "--yes-destroy")) == 0
    assert gpupve.vm(140) is None


def test_plan_with_password_login(monkeypatch, lab_catalog, gpupve, capsys):
    monkeypatch.delenv("PROXMOX_TOKEN_ID", raising=False)
    monkeypatch.delenv("PROXMOX_TOKEN_NAME", raising=False)
    monkeypatch.delenv("DEPLOYER_SECRETS_FILE", raising=False)
    monkeypatch.setenv("PROXMOX_USER", "root@pam")
    monkeypatch.setenv("PROXMOX_PASSWORD", ROOT_PASSWORD)
    assert plan_cmd.run(_args(plan_cmd, str(lab_catalog.path))) == 0
    assert "host=0000:01:00,pcie=1" in capsys.readouterr().out
