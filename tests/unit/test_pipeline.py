"""provisioners.pipeline: the Deployment the behave steps call.

Catalog checks run on the real catalogs and on broken copies (each check must be able to fail);
the VM methods run against GpuFakePve (tests/conftest.py fixtures), no lab guest."""
from __future__ import annotations

from pathlib import Path

import pytest

from provisioners import pipeline
from provisioners.errors import DeployError
from provisioners.pipeline import Deployment, require, setting

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "lab" / "lab-catalog.yml"
REAL = REPO / "infrastructure-catalog.yml"


def _lab(tmp_path=None, **replace) -> Deployment:
    path = LAB
    if replace:
        text = LAB.read_text()
        for old, new in replace.items():
            assert old in text, old
            text = text.replace(old, new)
        path = tmp_path / "lab-catalog.yml"
        path.write_text(text)
    d = Deployment(target="lab", catalog_path=path)
    d.load_and_validate(check_files=False)
    return d


def test_targets_and_default_catalogs():
    assert Deployment(target="lab").catalog_path == LAB
    assert Deployment(target="proxmox").catalog_path == REAL
    with pytest.raises(DeployError, match="unknown target"):
        Deployment(target="prod")


def test_require_names_the_missing_piece(monkeypatch, tmp_path):
    with pytest.raises(NotImplementedError, match="provisioners.nothing_here is not built yet"):
        require("provisioners.nothing_here", "issue #9")
    # an import error INSIDE an existing module is a bug, not "not built yet"
    (tmp_path / "broken_mod_for_pipeline_test.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        require("broken_mod_for_pipeline_test", "x")


def test_setting_walks_models_and_dicts():
    d = _lab()
    assert setting(d.vm, "gpu.expected.pci_id") == "10de:2d04"
    assert setting({"a": {"b": 1}}, "a.b") == 1
    with pytest.raises(KeyError, match="nope"):
        setting(d.vm, "gpu.nope")


def test_catalog_settings_match_and_mismatch_is_reported():
    d = _lab()
    assert d.vm_setting_mismatches({"vmid": "140", "stack.cuda.version": "12.8",
                                    "gpu.expected.memory_mib": "16311"}) == []
    problems = d.vm_setting_mismatches({"vmid": "141", "gpu.bogus": "x"})
    assert problems[0] == "vmid: catalog has '140', expected '141'"
    assert "gpu.bogus: missing" in problems[1]


def test_units(tmp_path):
    d = _lab()
    assert d.unit_problems({"cores": "count", "memory_mib": "MiB", "disk.size_gib": "GiB"}) == []
    assert any(name == "VM resources" and "memory_mib = 1024 MiB" in text for name, text, _ in d.take_evidence())
    problems = d.unit_problems({"memory_mib": "GiB", "cores": "parsecs"})
    assert "memory_mib: a value in GiB must be named *_gib" in problems
    assert any("unknown unit 'parsecs'" in p for p in problems)


def test_gpu_and_image_references(tmp_path):
    d = _lab()
    assert d.gpu_reference_problems() == []
    assert d.image_reference_problems() == []  # lab: no ISO needed
    real = Deployment(target="proxmox", catalog_path=REAL)
    real.load_and_validate(check_files=False)
    assert real.image_reference_problems() == []
    no_iso = tmp_path / "real.yml"
    no_iso.write_text(REAL.read_text().replace("iso: local:iso/ubuntu-24.04.3-live-server-amd64.iso", "iso: null"))
    real2 = Deployment(target="proxmox", catalog_path=no_iso)
    real2.load_and_validate(check_files=False)
    assert real2.image_reference_problems() == ["images.ubuntu-24.04.iso: missing"]
    unmapped = _lab(tmp_path, **{"mapping: rtx5060ti": "mapping: null"})
    assert unmapped.gpu_reference_problems() == ["gpu.mapping: no PCI resource mapping name (needed with an API token)"]


def test_yamllint_clean_and_dirty(tmp_path):
    assert _lab().lint_problems() == []
    dirty = _lab(tmp_path, **{"  node: pve1 ": "  node:    pve1 "})
    problems = dirty.lint_problems()
    assert problems and all(str(tmp_path) in p for p in problems)


def test_catalog_plan_shows_vm_gpu_and_stack():
    d = _lab()
    text = d.catalog_plan()
    assert "VM 140 vm-llm-aimachine" in text and "gpu.expected.pci_id: 10de:2d04" in text
    assert "hostpci0: mapping=rtx5060ti,pcie=1" in text  # from provisioners.vm.desired_config
    assert "cuda: version=12.8" in text
    assert d.take_evidence()[-1][0] == "catalog plan"


def test_lab_files_are_checked_once_the_lab_is_up(tmp_path):
    d = Deployment(target="lab", catalog_path=_lab(tmp_path, **{"../.lab/ssh/id_ed25519.pub": str(tmp_path / "nokey.pub")}).catalog_path)
    d.load_and_validate()  # lab not up: files not checked yet
    assert d.files_checked is False
    d.lab_up = True
    with pytest.raises(DeployError, match="nokey.pub does not exist"):
        d.load_and_validate()


def test_missing_library_parts_fail_the_step(monkeypatch):
    d = _lab()
    real_import = pipeline.importlib.import_module

    def fake_import(name):
        if name.startswith("provisioners.verify") or name.startswith("provisioners.guest.cuda"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name)

    monkeypatch.setattr(pipeline.importlib, "import_module", fake_import)
    d.session = object()  # no SSH needed to reach the import
    with pytest.raises(NotImplementedError, match="provisioners.verify is not built yet"):
        d.run_verify_ladder("gpu")
    with pytest.raises(NotImplementedError, match="provisioners.guest.cuda is not built yet"):
        d.converge("cuda")
    with pytest.raises(AssertionError, match="no verify ladder ran"):
        d.check_problems(["lspci"])


def test_check_problems_matches_names():
    from provisioners.guest.base import Check

    d = _lab()
    d.last_checks = [Check("lspci 10de:2d04 bound to nvidia", True), Check("nvidia-smi memory.total", False,
                                                                        "16311 MiB", "8192 MiB")]
    assert d.check_problems(["nvidia-smi memory.total", "nvcc --version"]) == [
        "nvidia-smi memory.total: expected 16311 MiB, got 8192 MiB", "nvcc --version: no such check in the verify ladder"]
    # a failed check fails the step even when the table does not name it
    assert d.check_problems(["lspci"]) == ["nvidia-smi memory.total: expected 16311 MiB, got 8192 MiB"]
    d.last_checks = d.last_checks[:1]
    assert d.check_problems(["lspci"]) == []


def test_error_explanation():
    d = _lab()
    good = DeployError("start of VM 140 failed", cause="start failed: QEMU exited with code 1",
                       remedy="GPU 0000:01:00 (10de:2d04): check IOMMU is on and no other VM uses it")
    assert d.error_explanation_problems(good, "IOMMU and other VMs") == []
    vague = DeployError("start failed")
    problems = d.error_explanation_problems(vague, "IOMMU and other VMs")
    assert len(problems) == 3 and "names none of" in problems[0]


def test_summary_and_records():
    from provisioners.results import OpResult

    d = _lab()
    d.scenario = "s1"
    d.record("vm", [OpResult("VM 140 create", "changed", duration_s=2), OpResult("image", "ok", "present")])
    d.scenario = "s2"
    d.record("driver", [OpResult("install", "failed", "dpkg error")])
    assert d.summary_text("s1") == "vm: 1 changed, 1 ok, 0 failed, 2.0s"
    assert d.failed_records("s1") == [] and d.failed_records() == ["driver: failed: dpkg error [install, 0.0s]"]
    assert d.summary_text("none") == ""


# ------------------------------------------------------------------ VM part against GpuFakePve
@pytest.fixture
def deployment(lab_catalog, pve_token, lab_image):
    d = Deployment(target="proxmox", catalog_path=lab_catalog.path)
    d.load_and_validate()
    d.client = pve_token
    return d


PASSTHROUGH = {"machine": "q35", "bios": "ovmf", "balloon": "0", "cpu": "host", "scsihw": "virtio-scsi-single",
               "hostpci0": "the catalog's GPU, pcie=1"}


def test_deploy_vm_then_every_check_passes_and_a_rerun_changes_nothing(deployment, gpupve):
    assert deployment.preflight() == []
    assert [c.action for c in deployment.plan()] == ["create"]
    results = deployment.ensure_vm()
    assert [r.status for r in results].count("changed") >= 2
    assert deployment.vm_state() == "running"
    assert deployment.resource_problems() == []
    assert deployment.config_problems(PASSTHROUGH) == []
    assert deployment.cloud_init_problems() == []
    assert deployment.managed_marker_present() is True
    assert deployment.plan() == []
    again = deployment.ensure_vm()
    assert again and {r.status for r in again} == {"ok"}
    # the checks can fail: change the live VM behind the deployer's back
    gpupve.vm(140).config["balloon"] = "2048"
    gpupve.vm(140).config["cores"] = "1"
    assert deployment.config_problems(PASSTHROUGH) == ["balloon: PVE has '2048', expected '0'"]
    assert deployment.resource_problems()[0].startswith("cores: PVE has '1'")


def test_failed_start_rolls_back_and_is_explained(deployment, gpupve):
    gpupve.vfio_busy = True
    err = deployment.deploy_expecting_failure()
    assert "start failed: QEMU exited with code 1" in str(err)
    assert deployment.error_explanation_problems(err, "IOMMU and other VMs") == []
    assert deployment.vm_state() == "absent"
    assert deployment.failed_records() and deployment.last_error is err


def test_deploy_expecting_failure_fails_when_it_succeeds(deployment):
    with pytest.raises(AssertionError, match="expects it to fail"):
        deployment.deploy_expecting_failure()


def test_evidence_is_shown_once_per_scenario():
    d = _lab()
    d.take_evidence()
    d.begin_scenario("a")
    d.show("PVE config", "x")
    d.show("PVE config", "x")
    d.show("PVE config", "y")
    assert [t for _, t, _ in d.take_evidence()] == ["x", "y"]
    d.begin_scenario("b")
    d.show("PVE config", "x")
    assert len(d.take_evidence()) == 1


@pytest.mark.parametrize("fault,quote,check", [
    ("vfio-busy", "Device or resource busy", "IOMMU and another VM using the device"),
    ("raw-address-with-token", "only root can set 'hostpci0' config for non-mapped devices", "the mapping"),
    ("no-gpu", "not found at 0000:01:00", "the card is seated and visible on the node"),
])
def test_lab_fault_hosts_fail_roll_back_and_explain(fault, quote, check):
    d = _lab()
    shared_client = object()
    d.client = shared_client
    d.use_lab_fault_host(fault)
    try:
        assert d.client is not shared_client
        err = d.deploy_expecting_failure()
        assert quote in str(err)
        assert d.error_explanation_problems(err, check) == []
        assert d.vm_state() == "absent"
    finally:
        d.end_scenario()
    assert d.client is shared_client  # back on the target's host


def test_lab_fault_host_with_an_unmanaged_vm_leaves_it_alone():
    d = _lab()
    before = d.use_lab_fault_host("unmanaged-vm-140")
    try:
        err = d.deploy_expecting_failure()
        assert "did not create" in str(err)
        assert d.lab_vm_snapshot(140) == before and before["status"] == "running"
    finally:
        d.close()


def test_lab_faults_only_in_the_lab():
    d = Deployment(target="proxmox", catalog_path=LAB)
    with pytest.raises(DeployError, match="needs the lab"):
        d.use_lab_fault_host("vfio-busy")
    with pytest.raises(DeployError, match="unknown lab fault"):
        _lab().use_lab_fault_host("meteor-strike")


def test_an_isolated_lab_gets_the_catalog_with_its_own_ports_and_state_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("LAB_STATE_DIR", raising=False)
    monkeypatch.delenv("LAB_PORT_BASE", raising=False)
    assert Deployment(target="lab")._catalog_file_to_load() == LAB       # the default lab: as written
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LAB_PORT_BASE", "19000")
    d = Deployment(target="lab")
    d.load_and_validate(check_files=False)
    assert d.catalog_path == LAB                                          # reported and linted: the real file
    derived = (tmp_path / "state" / "catalog-lab-catalog.yml").read_text()
    assert "17" + "006" not in derived and "1708" + "0" not in derived
    vm = d.vm
    assert str(d.catalog.proxmox.endpoint).startswith("https://127.0.0.1:19006")
    assert vm.ssh.port == 19022
    assert str(vm.ssh.private_key_file).startswith(str(tmp_path / "state" / "ssh"))
    assert "http://10.0.2.2:19080/apt" in derived and "http://127.0.0.1:19800" in derived
    assert Deployment(target="proxmox")._catalog_file_to_load() == REAL  # a real host: never rewritten


def _driver_error(**over) -> DeployError:
    # SYNTHESISED from the lab's driver-install-fails package (lab/artefacts/debs.py) as the driver
    # step reports it (provisioners/guest/driver.py _install_failure)
    make_log = ("make[2]: *** [/usr/src/linux-headers-6.1.0-40-amd64/Makefile:1934: /var/lib/dkms/nvidia/"
                "570.195.03/build] Error 2\nmake: *** [Makefile:82: modules] Error 2")
    fields = dict(what="NVIDIA driver install failed (nvidia-driver-570-open)", cause=make_log,
                  remedy="read the DKMS/apt log above; ... fix the cause, then re-run (the driver step resumes)",
                  command="sudo apt-get install -y nvidia-driver-570-open", exit_code=100,
                  evidence={"dkms make.log": make_log, "apt output": "E: Sub-process /usr/bin/dpkg returned an error code (1)"})
    fields.update(over)
    return DeployError(**fields)


def test_driver_failure_must_explain_itself():
    d = Deployment(target="lab")
    assert d.driver_failure_problems(_driver_error()) == []
    assert "command" in d.driver_failure_problems(_driver_error(command="sudo apt-get update"))[0]
    assert "exit code" in d.driver_failure_problems(_driver_error(exit_code=None))[0]
    assert "log lines" in d.driver_failure_problems(_driver_error(cause="something failed"))[0]
    assert "remedy" in d.driver_failure_problems(_driver_error(remedy="try again later"))[0]


def test_secure_boot_rejection_must_be_diagnosed_as_such():
    d = Deployment(target="lab")
    # SYNTHESISED: the shape of provisioners/guest/driver.py's Secure Boot error
    good = DeployError(what="Secure Boot rejected the NVIDIA kernel module",
                       cause="the kernel refuses the unsigned (DKMS-built) nvidia module: 'Key was rejected by service'",
                       remedy="turn Secure Boot off for this VM (...) or enroll the DKMS signing key with "
                              "`sudo mokutil --import /var/lib/shim-signed/mok/MOK.der`; then re-run",
                       evidence={"diagnosis": "Secure Boot rejected the unsigned nvidia module"})
    assert d.secure_boot_error_problems(good) == []
    generic = DeployError(what="the NVIDIA driver is installed but not working after the reboot",
                          remedy="read the kernel log above", evidence={})
    assert len(d.secure_boot_error_problems(generic)) == 3


def test_a_behave_run_holds_the_lab_guest_lock_until_it_stops(monkeypatch, tmp_path):
    import subprocess

    from lab import state

    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(pipeline, "_lab_cli", lambda *a: subprocess.CompletedProcess(a, 0, "", ""))
    d = Deployment(target="lab", hold_guest_lock=True)
    d.ensure_lab()
    with pytest.raises(DeployError, match="holds"):  # a lab test (or another run) now waits
        state.LabLock(state.paths().guest_session_lock).acquire(wait=0, what="holds")
    d.stop_lab()
    state.LabLock(state.paths().guest_session_lock).acquire(wait=0).release()
    unlocked = Deployment(target="lab")                # lab tests hold the lock themselves
    unlocked.ensure_lab()
    assert unlocked.guest_lock is None


def test_a_run_started_by_a_lock_holder_does_not_wait_for_its_parent(monkeypatch, tmp_path):
    import subprocess

    from lab import state

    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv(pipeline.GUEST_LOCK_HELD_ENV, "1")
    monkeypatch.setattr(pipeline, "_lab_cli", lambda *a: subprocess.CompletedProcess(a, 0, "", ""))
    parent = state.LabLock(state.paths().guest_session_lock).acquire(wait=0)
    try:
        d = Deployment(target="lab", hold_guest_lock=True)
        d.ensure_lab()
        assert d.guest_lock is None
    finally:
        parent.release()
