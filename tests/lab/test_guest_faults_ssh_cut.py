"""Guest fault (issue #4): the SSH connection is cut while the vLLM component runs ``pip install``.

On a VM 140 with a converged driver and no vLLM (venv and unit removed first), the vLLM apply
runs on the deployment's SSH session while a second connection watches the guest's process list;
as soon as ``/opt/vllm/bin/pip install`` runs, it kills (SIGKILL) the sshd processes of the first
connection - the ``sshd`` ancestors of that pip, so the watching connection survives. The apply
must then either resume (``provisioners.remote`` reconnects and re-runs the idempotent command)
or stop with a clear :class:`DeployError`; a re-run converges (then a third plan is empty), the
verify ladder passes, and nothing is lost: ``pip check`` is clean, the installed version is the
catalog's, the unit file is the rendered one, exactly one vLLM server and no pip left running.

Needs the lab (started here when it does not run); minutes on a TCG guest.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from provisioners.errors import DeployError
from provisioners.guest import units, vllm

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(5400)]

# Finds the oldest running `.../bin/pip install` (the [b] keeps this script's own command line
# from matching) and SIGKILLs its sshd ancestors - the session processes of the connection that
# started it - but not the listener (its parent is PID 1). Prints the killed PIDs, or nothing.
CUT_SCRIPT = r"""
pip=$(pgrep -o -f '/opt/vllm/[b]in/pip install') || exit 0
pid=$pip; kill_list=
while [ "$pid" -gt 1 ]; do
  ppid=$(ps -o ppid= -p "$pid" | tr -d ' '); comm=$(ps -o comm= -p "$pid")
  if [ "$comm" = sshd ] && [ "$ppid" != 1 ]; then kill_list="$kill_list $pid"; fi
  pid=$ppid
done
[ -n "$kill_list" ] && kill -KILL $kill_list && echo "pip $pip; killed sshd$kill_list"
"""


def _second_session(dep, store: Path):
    """An independent SSH connection to the guest (its own transport), pinned in ``store``."""
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
def deployment():
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
    for name in ("driver", "cuda"):
        dep.converge(name)
    try:
        yield dep
    finally:
        dep.close()
        dep.stop_lab()
        if saved is None:
            os.environ.pop("VLLM_API_KEY", None)


class Cutter(threading.Thread):
    """Polls the guest from its own connection until pip runs, then cuts the other connection."""

    def __init__(self, session, timeout_s: float = 1800):
        super().__init__(daemon=True)
        self.session, self.timeout_s = session, timeout_s
        self.done = threading.Event()
        self.killed: str = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            while not self.done.is_set() and time.monotonic() < deadline:
                out = self.session.run(CUT_SCRIPT, sudo=True, timeout_s=60, check=False).stdout
                if out.strip():
                    self.killed = out.strip()
                    return
                time.sleep(0.3)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_ssh_cut_during_vllm_pip_install_then_rerun_converges(deployment, tmp_path):
    dep = deployment
    session = dep.open_session()
    # a guest without vLLM: the apply must create the venv and run pip
    session.run(f"systemctl disable --now {vllm.UNIT} 2>/dev/null; rm -f {vllm.UNIT_PATH}; "
                f"systemctl daemon-reload; systemctl reset-failed {vllm.UNIT} 2>/dev/null; "
                f"rm -rf {vllm.VENV}; true", sudo=True, timeout_s=300)
    assert session.run(f"test -e {vllm.VENV}", check=False).exit_code != 0

    # the session's log shows whether run() saw the drop and reconnected
    said: list[str] = []
    log_fn = session._log_fn
    session._log_fn = lambda msg: (said.append(str(msg)), log_fn(msg))
    watcher = _second_session(dep, tmp_path / "known_hosts.json")
    cutter = Cutter(watcher)
    cutter.start()
    started = time.monotonic()
    outcome: str
    try:
        results = dep.converge("vllm")
        outcome = "resumed: " + "; ".join(str(r) for r in results)
        assert not [r for r in results if r.status == "failed"], outcome
        lost = [m for m in said if "connection lost" in m]
        assert lost, f"the apply went on but the session never saw the cut: {said[-5:]}"
        outcome += f"\n  session log: {lost[0][:200]}"
    except DeployError as err:
        # a clear error: what, a cause and a remedy (no bare traceback)
        assert err.what and err.remedy, repr(err)
        outcome = f"stopped with DeployError: {err.what} / {err.cause} / {err.remedy}"
    finally:
        cutter.done.set()
        cutter.join(120)
        session._log_fn = log_fn
    print(f"first apply after {time.monotonic() - started:.0f} s: {outcome}\n"
          f"cut: {cutter.killed}", file=sys.stderr)
    assert cutter.error is None, repr(cutter.error)
    assert cutter.killed, "pip install was never seen running: the connection was not cut"

    # the re-run converges; a third plan is empty (nothing left half-done)
    started = time.monotonic()
    dep.converge("vllm")
    print(f"re-run converged after {time.monotonic() - started:.0f} s", file=sys.stderr)
    comp = vllm.component(dep.catalog, dep.vm)
    assert comp.plan(comp.facts(session)) == []

    # nothing lost: the venv is whole, the unit is the rendered one, one server, no pip left
    check = session.run(f"{vllm.VENV}/bin/pip check", timeout_s=600, check=False)
    assert check.exit_code == 0, check.stdout + check.stderr
    version = session.run(
        f"{vllm.VENV}/bin/python -c 'import vllm, importlib.metadata as m; "
        f"print(m.version(\"vllm\"))'", timeout_s=600, check=False)
    assert version.exit_code == 0 and version.stdout.strip() == comp.settings.version, version
    unit_sha = session.run(f"sha256sum {vllm.UNIT_PATH}", sudo=True).stdout.split()[0]
    assert unit_sha == units.sha256_text(comp.unit_text())
    pips = session.run("pgrep -f '/opt/vllm/[b]in/pip' || true", sudo=True).stdout.split()
    assert pips == [], f"pip still running: {pips}"
    state = units.service_state(session, vllm.UNIT)
    assert state.active and state.main_pid > 0, state
    servers = session.run(f"pgrep -u {vllm.USER} -f '[v]llm serve' || true", sudo=True).stdout.split()
    assert servers == [str(state.main_pid)], servers

    checks = comp.verify(session)
    assert [c for c in checks if not c.passed] == []
    watcher.close()
