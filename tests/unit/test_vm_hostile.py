"""VM 140 against GpuFakePve when the operator or the node gets in the way: a plan that apply
would refuse exits 1, more cores than the node has is caught before anything is created, and
Ctrl-C during apply leaves nothing behind (or says exactly what is left)."""
from __future__ import annotations

import json

import pytest

from provisioners.commands import destroy as destroy_cmd
from provisioners.commands import plan as plan_cmd
from provisioners.errors import DeployError
from provisioners.vm import apply_vm, preflight
from provisioners.vm import apply as vm_apply
from tests.conftest import writes
from tests.unit.helpers import command_args as _args
from tests.unit.helpers import token_env  # noqa: F401  (pytest fixture)

NODE = "pve1"


def _cores(catalog, cores):
    vm = catalog.vm(140).model_copy(update={"cores": cores})
    return catalog.model_copy(update={"vms": [vm]}), vm


# ------------------------------------------------------------------------------ plan exit status

@pytest.mark.gpu_profile("no-gpu")
def test_plan_exits_1_when_preflight_finds_an_error(token_env, lab_catalog, gpupve, lab_image, capsys):
    assert plan_cmd.run(_args(plan_cmd, str(lab_catalog.path))) == 1
    out, err = capsys.readouterr()
    assert "ERROR" in out and "not found at 0000:01:00" in out
    assert err == "apply would stop for VM 140 (vm-llm-aimachine): 1 pre-flight error(s); fix them first\n"
    assert writes(gpupve) == []


def test_plan_of_an_unmanaged_vmid_exits_1_and_touches_nothing(token_env, lab_catalog, gpupve, lab_image, capsys):
    other = gpupve.add_vm(140, "someone-elses", node=NODE, status="running",
                          config={"memory": "4096", "cores": "1", "scsi0": "local-lvm:vm-140-disk-0,size=32G"})
    before = json.dumps(other.config, sort_keys=True, default=str)
    assert plan_cmd.run(_args(plan_cmd, str(lab_catalog.path))) == 1
    assert "refused change" in capsys.readouterr().err
    with pytest.raises(DeployError, match="without confirmation"):
        destroy_cmd.run(_args(destroy_cmd, str(lab_catalog.path)))
    with pytest.raises(DeployError, match="not created by this tool"):
        destroy_cmd.run(_args(destroy_cmd, str(lab_catalog.path), "--yes-destroy"))
    assert writes(gpupve) == []
    assert json.dumps(other.config, sort_keys=True, default=str) == before and other.status == "running"


# ----------------------------------------------------------------------------------- vCPUs

def test_more_cores_than_the_node_has_is_a_preflight_error(pve_token, lab_catalog, gpupve, lab_image):
    catalog, vm = _cores(lab_catalog, 64)  # fakepve's node has 4 CPUs
    errors = [f for f in preflight(pve_token, catalog, vm) if f.severity == "error"]
    assert [f.message for f in errors] == [
        "VM 140 wants 64 cores, node pve1 has 4 CPUs (PVE starts no VM with more vCPUs than the node has)"]
    with pytest.raises(DeployError, match="pre-flight checks failed"):
        apply_vm(pve_token, catalog, vm)
    assert writes(gpupve) == [] and gpupve.vm(140) is None


def test_cores_within_the_node_pass(pve_token, lab_catalog, gpupve, lab_image):
    catalog, vm = _cores(lab_catalog, 4)
    infos = [f.message for f in preflight(pve_token, catalog, vm) if f.severity == "info"]
    assert f"node {NODE}: 4 CPUs" in infos


# ----------------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_during_start_rolls_back_and_says_so(pve_token, lab_catalog, gpupve, lab_image, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(vm_apply, "start_vm", interrupted)
    with pytest.raises(DeployError) as info:
        apply_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    text = str(info.value)
    assert text.startswith("interrupted (Ctrl-C) while deploying VM 140 (vm-llm-aimachine)")
    assert "VM 140 create: vm-llm-aimachine created" in text
    assert "rollback: VM 140 (created by this run) was stopped and destroyed with its disks" in text
    assert gpupve.vm(140) is None


def test_ctrl_c_while_the_create_is_in_flight_removes_what_pve_created(pve_token, lab_catalog, gpupve, lab_image,
                                                                       monkeypatch):
    real_post = type(pve_token).post

    def post(self, path, /, **data):
        answer = real_post(self, path, **data)
        if path == f"/nodes/{NODE}/qemu":
            raise KeyboardInterrupt  # PVE got the create; the operator pressed Ctrl-C before the answer
        return answer
    monkeypatch.setattr(type(pve_token), "post", post)
    with pytest.raises(DeployError) as info:
        apply_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    assert "rollback: VM 140 (created by this run) was stopped and destroyed" in str(info.value)
    assert gpupve.vm(140) is None


def test_second_ctrl_c_during_rollback_says_what_may_be_left(pve_token, lab_catalog, gpupve, lab_image, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(vm_apply, "start_vm", interrupted)
    monkeypatch.setattr(vm_apply, "rollback", interrupted)
    with pytest.raises(DeployError) as info:
        apply_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    text = str(info.value)
    assert "rollback interrupted: VM 140 may be left behind" in text and "qm destroy 140 --purge" in text


def test_failed_destroy_says_the_vm_was_stopped_and_still_exists(pve_token, lab_catalog, gpupve, lab_image):
    from provisioners.vm import destroy_vm
    apply_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    gpupve.fail("DELETE", f"/nodes/{NODE}/qemu/140", 500, "storage is busy")
    with pytest.raises(DeployError) as info:
        destroy_vm(pve_token, lab_catalog, lab_catalog.vm(140), confirm=True)
    text = str(info.value)
    assert text.startswith("destroy of VM 140 (vm-llm-aimachine) failed; it was stopped and still exists: "
                           "PVE refused DELETE /nodes/pve1/qemu/140")
    assert "storage is busy" in text
    assert gpupve.vm(140).status == "stopped"


def test_ctrl_c_while_updating_an_existing_vm_says_nothing_is_rolled_back(pve_token, lab_catalog, gpupve, lab_image,
                                                                          monkeypatch):
    apply_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    gpupve.vm(140).status = "stopped"  # the converge will start it

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(vm_apply, "start_vm", interrupted)
    with pytest.raises(DeployError) as info:
        apply_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    assert str(info.value).startswith("interrupted (Ctrl-C) while updating VM 140 (vm-llm-aimachine)")
    assert "nothing is rolled back" in str(info.value)
    assert gpupve.vm(140) is not None  # never destroyed: it predates this run
