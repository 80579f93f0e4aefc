"""provisioners.proxmox: TLS, credentials, tasks and robustness on fakepve's faults (GpuFakePve on loopback)."""
from __future__ import annotations

import pytest

from provisioners.errors import DeployError
from provisioners.proxmox import (Credentials, PveConnectionLost, PveTaskFailed, connect, credentials_from_env,
                                  is_task_ok)
from provisioners.vm import apply_vm, plan_vm, preflight
from tests.conftest import ROOT_PASSWORD, writes

NODE = "pve1"
ROOT = Credentials("root@pam", password=ROOT_PASSWORD)


def _with_proxmox(catalog, **update):
    return catalog.model_copy(update={"proxmox": catalog.proxmox.model_copy(update=update)})


# ------------------------------------------------------------------------------- TLS, login

def test_tls_is_verified_by_default(lab_catalog, fast_retry):
    no_ca = _with_proxmox(lab_catalog, ca_file=None)
    with pytest.raises(DeployError) as err:
        connect(no_ca, credentials=ROOT, retry=fast_retry)
    assert "TLS verification" in str(err.value) and "ca_file" in str(err.value)


def test_insecure_needs_the_flag_and_warns(lab_catalog, fast_retry, capsys):
    off = _with_proxmox(lab_catalog, ca_file=None, verify_tls=False)
    with pytest.raises(DeployError, match="--insecure"):
        connect(off, credentials=ROOT, retry=fast_retry)
    client = connect(off, insecure=True, credentials=ROOT, retry=fast_retry)
    assert client.verify is False
    assert "verification of the Proxmox API is OFF" in capsys.readouterr().err


def test_http_timeout_is_at_least_30_s(pve_root):
    assert pve_root.timeout_s >= 30


def test_wrong_password_is_a_clear_error(lab_catalog, fast_retry):
    with pytest.raises(DeployError, match="login to .* as root@pam failed"):
        connect(lab_catalog, credentials=Credentials("root@pam", password="wrong"), retry=fast_retry)


def test_credentials_from_env(monkeypatch):
    for name in ("PROXMOX_USER", "PROXMOX_TOKEN_NAME", "PROXMOX_TOKEN_ID", "PROXMOX_TOKEN_SECRET",
                 "PROXMOX_PASSWORD", "DEPLOYER_SECRETS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DeployError, match="PROXMOX_USER is not set"):
        credentials_from_env()
    monkeypatch.setenv("PROXMOX_USER", "deployer@pve")
    monkeypatch.setenv("PROXMOX_TOKEN_NAME", "ci")
    with pytest.raises(DeployError, match="PROXMOX_TOKEN_SECRET"):
        credentials_from_env()
    monkeypatch.setenv("PROXMOX_TOKEN_SECRET", "s3cr3t-token-value")
    creds = credentials_from_env()
    assert creds.principal == "deployer@pve!ci" and not creds.may_set_raw_pci
    assert "s3cr3t" not in repr(creds)
    monkeypatch.delenv("PROXMOX_TOKEN_NAME")
    monkeypatch.setenv("PROXMOX_USER", "root@pam")
    monkeypatch.setenv("PROXMOX_PASSWORD", "pw-of-root")
    assert credentials_from_env().may_set_raw_pci


def test_task_exit_statuses():
    assert is_task_ok("OK") and is_task_ok("WARNINGS: 2")
    assert not is_task_ok("start failed: QEMU exited with code 1") and not is_task_ok(None)


def test_failed_task_quotes_the_log(pve_root, gpupve):
    gpupve.add_vm(150, "x", node=NODE)
    gpupve.fail("POST", f"/nodes/{NODE}/qemu/150/status/start", error="qemu_exited_code")
    upid = pve_root.post(f"/nodes/{NODE}/qemu/150/status/start")
    with pytest.raises(PveTaskFailed) as err:
        pve_root.wait_task(upid, 10, "start of VM 150")
    assert err.value.exitstatus == "QEMU exited with code 1"
    assert "TASK ERROR: QEMU exited with code 1" in str(err.value)


# -------------------------------------------------------------------------------- robustness

def test_flaky_network_reads_are_retried(pve_token, lab_catalog, gpupve, lab_image):
    gpupve.flaky_network(drop_rate=0.3, seed=4)
    gpupve._random.seed(4)  # fakepve seeds at start(); the fake is already running: same sequence every run
    findings = preflight(pve_token, lab_catalog, lab_catalog.vm(140))
    assert [f for f in findings if f.severity == "error"] == []
    changes = plan_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    assert [c.action for c in changes] == ["create"]
    assert pve_token.retries > 0
    assert writes(gpupve) == []


def test_lost_create_response_is_not_reposted(pve_token, lab_catalog, gpupve, lab_image):
    gpupve.lose_response("POST", f"/nodes/{NODE}/qemu")
    apply_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    creates = [p for m, p in writes(gpupve) if m == "POST" and p.endswith(f"/nodes/{NODE}/qemu")]
    assert len(creates) == 1
    assert gpupve.vm(140).status == "running"


def test_create_that_never_arrived_is_sent_once_more_after_looking(pve_token, lab_catalog, gpupve, lab_image,
                                                                  monkeypatch):
    real_write = type(pve_token).write
    lost = []

    def write(self, method, path, /, **data):
        if method == "POST" and path == f"/nodes/{NODE}/qemu" and not lost:
            lost.append(path)
            raise PveConnectionLost("connection lost during POST", cause="simulated: request never sent")
        return real_write(self, method, path, **data)
    monkeypatch.setattr(type(pve_token), "write", write)
    apply_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    creates = [p for m, p in writes(gpupve) if m == "POST" and p.endswith(f"/nodes/{NODE}/qemu")]
    assert lost and len(creates) == 1
    # it looked for the VM between the lost request and the repeat
    paths = [(m, p) for m, p, _ in gpupve.requests]
    repeat = paths.index(("POST", f"/api2/json/nodes/{NODE}/qemu"))
    assert ("GET", "/api2/json/cluster/resources") in paths[:repeat]


def test_config_lock_held_is_retried_then_explained(pve_token, lab_catalog, gpupve_served, gpupve, lab_image):
    vm = lab_catalog.vm(140)
    apply_vm(pve_token, lab_catalog, vm)
    gpupve_served.call(gpupve.hold_config_lock(140, None))
    more = vm.model_copy(update={"cores": 4})
    mark = len(gpupve.requests)
    with pytest.raises(DeployError) as err:
        apply_vm(pve_token, lab_catalog, more)
    text = str(err.value)
    assert "can't lock file '/var/lock/qemu-server/lock-140.conf' - got timeout" in text
    assert "config lock" in text
    puts = [p for m, p in writes(gpupve, mark) if m == "PUT"]
    assert len(puts) == pve_token.retry.lock_attempts
    assert gpupve.vm(140) is not None  # an existing VM is never rolled back
    gpupve.release_config_lock(140)
    apply_vm(pve_token, lab_catalog, more)
    assert gpupve.vm(140).pending == {"cores": "4"}


def test_expired_ticket_logs_in_again(pve_root, lab_catalog, gpupve, lab_image):
    assert pve_root.logins == 1
    for ticket in gpupve.tickets.values():
        ticket["expires"] = 0  # PVE tickets live 2 h; this one has run out
    apply_vm(pve_root, lab_catalog, lab_catalog.vm(140))
    assert pve_root.logins == 2
    assert gpupve.vm(140).status == "running"


def test_slow_start_past_the_http_timeout_is_awaited(lab_catalog, gpupve, lab_image, fast_retry):
    client = connect(lab_catalog, credentials=ROOT, retry=fast_retry, timeout_s=0.5)
    gpupve.time_scale = 0.01
    gpupve.gpu_start_secs = 150  # 1.5 s real, three HTTP timeouts
    apply_vm(client, lab_catalog, lab_catalog.vm(140))
    assert gpupve.vm(140).status == "running"
    starts = [p for m, p in writes(gpupve) if p.endswith("/status/start")]
    assert len(starts) == 1
    start_upid = [t["upid"] for t in gpupve.tasklog if t["type"] == "qmstart"][0]
    polls = [p for m, p, _ in gpupve.requests if m == "GET" and start_upid in p and p.endswith("/status")]
    assert len(polls) > 1


def test_start_beyond_start_timeout_is_rolled_back(lab_catalog, gpupve, lab_image, fast_retry):
    catalog = _with_proxmox(lab_catalog, start_timeout_s=1)
    client = connect(catalog, credentials=ROOT, retry=fast_retry)
    gpupve.time_scale = 0.01
    gpupve.gpu_start_secs = 400  # 4 s real
    with pytest.raises(DeployError) as err:
        apply_vm(client, catalog, catalog.vm(140))
    text = str(err.value)
    assert "did not finish in time" in text and "start_timeout_s" in text
    assert "destroyed" in text
    assert gpupve.vm(140) is None


def test_lost_start_response_follows_the_task_instead_of_starting_twice(pve_token, lab_catalog, gpupve, lab_image):
    gpupve.lose_response("POST", "/qemu/140/status/start")
    apply_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    assert [p for m, p in writes(gpupve) if p.endswith("/status/start")] == [f"/api2/json/nodes/{NODE}/qemu/140/status/start"]
    assert [t["exitstatus"] for t in gpupve.tasklog if t["type"] == "qmstart"] == ["OK"]


def test_lost_resize_response_is_repeated_as_it_is_idempotent(pve_token, lab_catalog, gpupve, lab_image):
    gpupve.lose_response("PUT", "/qemu/140/resize")
    apply_vm(pve_token, lab_catalog, lab_catalog.vm(140))
    assert len([p for m, p in writes(gpupve) if p.endswith("/resize")]) == 2
    assert gpupve.vm(140).config["scsi0"].endswith("size=8G")


def test_ticket_revoked_mid_run_logs_in_again(pve_root, gpupve):
    gpupve.revoke_tickets()
    assert pve_root.get("/version")["repoid"] == "fakepve"
    assert pve_root.logins == 2


@pytest.mark.parametrize("node_state", ["offline"])
def test_offline_node_is_a_preflight_error(pve_token, lab_catalog, gpupve, node_state):
    from provisioners.vm import preflight
    gpupve.set_node_offline(NODE)
    findings = preflight(pve_token, lab_catalog, lab_catalog.vm(140))
    assert [(f.severity, f.message) for f in findings] == [("error", f"node {NODE} is {node_state}")]
