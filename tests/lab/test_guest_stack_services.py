"""vLLM and Ollama on the lab guest: install, a second run that changes and restarts nothing,
verify, and the ``vllm-crash-once`` fault ending with systemd's restart and a passing verify.

Needs the lab (``python -m lab up``; started here and stopped again when nobody else runs it)
and a converged driver (the Ollama plan refuses while nvidia-smi fails). TCG guest: minutes.
The Ollama sha256 is taken from the lab's artefact server over loopback (the lab catalog holds
a placeholder: the lab builds the tarball).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from lab import state
from provisioners.guest import ollama, units, vllm
from provisioners.pipeline import LAB_VLLM_API_KEY, Deployment

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(3600)]

# The lab's fixed public key (or the operator's): the same key as every other lab run, so that
# runs sharing the lab guest do not rewrite each other's env file.
API_KEY = os.environ.get("VLLM_API_KEY") or LAB_VLLM_API_KEY
FAULT = "/etc/lab/faults/vllm-crash-once"


def _session(dep, store):
    """The run's SSH session, pinned in this test's own known-hosts store under the VM's
    ``vmgenid`` (the shared store may hold the key of an earlier incarnation of VM 140)."""
    from provisioners.remote import RemoteSession

    vm = dep.vm
    key = Path(str(vm.ssh.private_key_file)).expanduser()
    if not key.is_absolute():
        key = dep.catalog_path.parent / key
    session = RemoteSession(vm.ssh_host, vm.ssh.port, vm.cloud_init.user, key,
                            known_hosts_store=store, vm_identity=f"lab/{vm.vmid}",
                            vm_generation=dep.vm_config().get("vmgenid"))
    session.connect(wait_s=600)
    return session


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    dep = Deployment(target="lab")
    dep.load_and_validate(check_files=False)
    dep.ensure_lab()
    dep.load_and_validate(check_files=True)
    dep.ensure_vm()
    dep.session = _session(dep, tmp_path_factory.mktemp("pins") / "known_hosts.json")
    dep.bootstrap_guest()
    dep.converge("driver")
    try:
        yield dep
    finally:
        dep.close()
        dep.stop_lab()


@pytest.fixture(scope="module")
def vm(deployment):
    info = json.loads(state.paths().ready.read_text())
    url = f"http://127.0.0.1:{info['ports']['artefacts']}/ollama/ollama-linux-amd64.tgz"
    with urllib.request.urlopen(url, timeout=120) as resp:  # loopback only
        sha = hashlib.sha256(resp.read()).hexdigest()
    vm = deployment.vm
    stack = vm.stack.model_copy(update={"ollama": vm.stack.ollama.model_copy(
        update={"sha256": sha})})
    return vm.model_copy(update={"stack": stack})


def converge(comp, session):
    facts = comp.facts(session)
    changes = comp.plan(facts)
    assert not [c for c in changes if c.action == "refuse"], [str(c) for c in changes]
    return changes, comp.apply(session, facts, changes)


def test_install_rerun_verify_and_crash_once(deployment, vm):
    session = deployment.open_session()
    vc = vllm.VllmComponent(vm, api_key=API_KEY)
    oc = ollama.OllamaComponent(vm)

    # 1. install (or converge whatever an earlier run left)
    for comp in (vc, oc):
        converge(comp, session)

    # 2. a second run: empty plans, nothing changed, nothing restarted
    before = {u: units.service_state(session, u) for u in (vllm.UNIT, ollama.UNIT)}
    for comp in (vc, oc):
        changes, results = converge(comp, session)
        assert changes == [], [str(c) for c in changes]
        assert [str(r) for r in results if r.changed] == []
    after = {u: units.service_state(session, u) for u in (vllm.UNIT, ollama.UNIT)}
    for unit in before:
        assert after[unit].identity == before[unit].identity, unit
        assert after[unit].main_pid > 0

    # 3. verify: every check of both ladders rungs passes
    checks = vllm.VllmComponent(vm, api_key=API_KEY).verify(session) + oc.verify(session)
    assert [c for c in checks if not c.passed] == []
    [arch] = [c for c in checks if "sm_120" in c.name]
    assert arch.actual == "skipped: torch not installed"  # the lab's fake vLLM has no torch

    # 4. crash once after start: systemd restarts vLLM, then verify passes again
    # The fake removes the marker as the service user, so the directory must be vllm's (else it
    # crashes forever). A manual restart resets NRestarts (systemd.service(5)); the crash's
    # automatic restart makes it 1.
    session.run(f"install -d -o {vllm.USER} /etc/lab/faults && touch {FAULT} && "
                f"systemctl restart {vllm.UNIT}", sudo=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            state_now = units.service_state(session, vllm.UNIT)
            gone = session.run(f"test -e {FAULT}", sudo=True, check=False).exit_code != 0
            if gone and state_now.n_restarts and state_now.active:
                break
            assert time.monotonic() < deadline, state_now
            time.sleep(3)
    finally:
        session.run(f"rm -f {FAULT}", sudo=True, check=False)  # never leave a crash loop behind
    journal = units.journal_tail(session, vllm.UNIT, 400)
    assert "lab fault vllm-crash-once" in journal
    assert state_now.n_restarts >= 1
    vc.wait_ready(session)
    checks = vc.verify(session)
    assert [c for c in checks if not c.passed] == []
