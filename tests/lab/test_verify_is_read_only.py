"""``make verify TARGET=lab`` (behave ``@verify and not @wip``) changes nothing: issue #4's proof.

On a converged VM 140 (VM, bootstrap, driver, cuda, vllm, ollama - the same calls as a deploy),
the test snapshots the guest (packages, unit files, the content of /etc/systemd/system, the
MainPID/ActiveEnterTimestamp of vllm and ollama) and the end of the lab's PVE request log
(``<lab state dir>/pve-requests.jsonl``, written by :class:`lab.hypervisor.LabPve`), runs the
@verify scenarios with behave in a subprocess, then requires that behave passed, that every PVE
request since was a read (the login ``POST /access/ticket`` aside) and that the guest snapshots
are identical. The log and its readers are unit-tested in tests/unit/test_lab_request_log.py
(a deliberate write is found); this test also makes one real, harmless write at the end to show
the running lab's log records it.

Needs the lab (started here when it does not run) and minutes on a TCG guest.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import state
from lab.hypervisor import LabPve, read_request_log, writes_in

REPO = Path(__file__).resolve().parents[2]
FEATURE = "features/vm_llm_gpu_passthrough.feature"
SERVICES = ("vllm", "ollama")
VERIFY_SCENARIOS = 4  # @verify scenarios of the feature file (GPU, driver, vLLM, Ollama)

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(5400)]

SNAPSHOT_COMMANDS = {
    "packages": "dpkg-query -W -f '${Package} ${Version} ${Status}\\n'",
    "unit files": "systemctl list-unit-files --no-legend",
    "/etc/systemd/system": "find /etc/systemd/system -type f -exec sha256sum {} + | sort -k2",
}


def guest_snapshot(session) -> dict[str, str]:
    """Read-only picture of the guest: command name -> output, plus each service's MainPID and
    ActiveEnterTimestamp (a restart changes them)."""
    snap = {name: session.run(cmd, sudo=True, timeout_s=300).stdout
            for name, cmd in SNAPSHOT_COMMANDS.items()}
    for unit in SERVICES:
        snap[f"{unit} identity"] = session.run(
            f"systemctl show -p MainPID -p ActiveEnterTimestamp {unit}", timeout_s=120).stdout
    return snap


def snapshot_differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """One line per snapshot entry that differs (with the changed lines), empty when equal."""
    out = []
    for key in before:
        if before[key] != after.get(key):
            old, new = set(before[key].splitlines()), set(after.get(key, "").splitlines())
            out.append(f"{key}: removed {sorted(old - new)[:10]}, added {sorted(new - old)[:10]}")
    return out


# ------------------------------------------------------------------ the lab proof
@pytest.fixture(scope="module")
def converged():
    from provisioners.pipeline import LAB_VLLM_API_KEY, Deployment

    # the key behave's environment.py uses on the lab: the same env file, no restart between us
    saved = os.environ.get("VLLM_API_KEY")
    os.environ.setdefault("VLLM_API_KEY", LAB_VLLM_API_KEY)
    dep = Deployment(target="lab")
    dep.load_and_validate(check_files=False)
    dep.ensure_lab()
    dep.load_and_validate(check_files=True)
    dep.ensure_vm()
    dep.bootstrap_guest()
    for name in ("driver", "cuda", "vllm", "ollama"):
        dep.converge(name)
    try:
        yield dep
    finally:
        dep.close()
        dep.stop_lab()
        if saved is None:
            os.environ.pop("VLLM_API_KEY", None)


def test_make_verify_changes_nothing(converged):
    paths = state.paths()
    log = paths.root / LabPve.REQUEST_LOG_NAME
    session = converged.open_session()
    before = guest_snapshot(session)
    _, offset = read_request_log(log)
    assert log.exists(), f"the lab writes no request log at {log}"

    started = time.monotonic()
    proc = subprocess.run(
        [str(REPO / ".venv/bin/behave"), "-D", "target=lab", "--tags=@verify and not @wip",
         "--no-capture", FEATURE],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True, capture_output=True,
        timeout=3600)
    took = time.monotonic() - started
    print(f"behave @verify: exit {proc.returncode} after {took:.0f} s", file=sys.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    summary = re.search(r"(\d+) scenarios? passed, (\d+) failed", proc.stdout)
    assert summary and summary.groups() == (str(VERIFY_SCENARIOS), "0"), proc.stdout[-3000:]

    entries, end = read_request_log(log, offset)
    assert entries, "behave made no PVE request at all: the log does not see it"
    assert writes_in(entries) == [], f"@verify wrote to PVE: {writes_in(entries)}"
    after = guest_snapshot(session)
    assert snapshot_differences(before, after) == []

    # The log is able to show a write: one harmless POST (an unknown status action, answered
    # with an error, changes nothing) must show up as a write.
    from tests.lab.conftest import NODE, VMID, _pve

    with pytest.raises(Exception):  # proxmoxer raises ResourceException on the error answer
        _pve(paths).nodes(NODE).qemu(VMID).status("lab-probe").post()
    deadline = time.monotonic() + 30
    while not (probe := writes_in(read_request_log(log, end)[0])) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [e["method"] for e in probe] == ["POST"], probe
    assert probe[0]["path"].endswith("/status/lab-probe") and probe[0]["status"] >= 400
