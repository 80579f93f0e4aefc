"""Guest bootstrap over a REAL SSH session (the throw-away sshd of test_remote).

Real: the SSH session, bash, /proc/locks with a real fcntl lock held by a real process,
curl downloading a key from a loopback HTTP server, atomic file writes. Shimmed through sshd's
``SetEnv PATH``: ``cloud-init``, ``dpkg`` and ``apt-get`` (the host's own must not be touched).
"""
from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provisioners.errors import DeployError
from provisioners.guest import bootstrap as bs
from tests.unit.helpers import guest  # noqa: F401  (pytest fixture)
from tests.unit.test_remote import sshd, store  # noqa: F401  (pytest fixtures)


def script(bindir: Path, name: str, text: str) -> None:
    (bindir / name).write_text("#!/bin/bash\n" + text)
    (bindir / name).chmod(0o755)


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    """A real process holding an fcntl write lock on ``path`` (as dpkg/apt do)."""
    proc = subprocess.Popen([sys.executable, "-c",
                             "import fcntl,sys,time; f=open(sys.argv[1],'w'); "
                             "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); "
                             "time.sleep(float(sys.argv[2]))", str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_holder_named_and_wait_times_out(guest, tmp_path):
    session, _ = guest
    lock = tmp_path / "lock-frontend"
    lock.touch()
    assert bs.lock_holders(session, [str(lock)]) == []
    holder = hold_lock(lock, 60)
    try:
        [h] = bs.lock_holders(session, [str(lock)])
        assert (h.pid, h.lock) == (holder.pid, str(lock))
        assert h.comm.startswith("python") and "fcntl.lockf" in h.args
        with pytest.raises(DeployError) as ei:
            bs.wait_for_apt_locks(session, timeout_s=1, poll_s=0.3, files=[str(lock)])
        assert f"PID {holder.pid}" in str(ei.value) and "unattended-upgrades" in ei.value.remedy
    finally:
        holder.kill()
        holder.wait()


def test_wait_for_lock_released(guest, tmp_path):
    session, _ = guest
    lock = tmp_path / "lock"
    lock.touch()
    lines: list[str] = []
    session._log_fn = lines.append
    holder = hold_lock(lock, 1.5)
    r = bs.wait_for_apt_locks(session, timeout_s=30, poll_s=0.3, files=[str(lock)])
    holder.wait()
    assert r.status == "ok" and r.reason.startswith("waited") and str(holder.pid) in r.reason
    assert any(f"PID {holder.pid}" in ln for ln in lines)
    assert bs.wait_for_apt_locks(session, files=[str(lock)]).reason == "free"


# cloud-init status --long text: SYNTHESISED in the documented format of cloud-init 24.x
# (`cloud-init status --long`, cloud-init docs "cli: status"); no capture in the corpus.
CI_LONG_ERROR = """status: error
extended_status: error - done
boot_status_code: enabled-by-generator
last_update: Sun, 29 Nov 2026 17:01:02 +0000
detail: DataSourceNoCloud [seed=/dev/vdb]
errors:
\t- ('locale', ProcessExecutionError("Unexpected error while running command. locale-gen en_US.UTF-8"))
recoverable_errors: {}
"""


def test_cloud_init_error_shows_long_status(guest):
    session, bindir = guest
    script(bindir, "cloud-init", f"""
case "$*" in
  "status --wait") echo "status: error"; exit 1;;
  "status --long") cat <<'EOF'
{CI_LONG_ERROR}EOF
  exit 1;;
esac""")
    with pytest.raises(DeployError) as ei:
        bs.wait_for_cloud_init(session, timeout_s=30)
    assert "status: error" in str(ei.value) and "locale-gen en_US.UTF-8" in ei.value.cause
    assert ei.value.exit_code == 1


def test_cloud_init_done_and_recoverable(guest):
    session, bindir = guest
    script(bindir, "cloud-init", 'case "$*" in "status --wait") echo "status: done";; esac')
    assert bs.wait_for_cloud_init(session).reason == "done"
    script(bindir, "cloud-init", 'case "$*" in "status --wait") echo "status: done"; exit 2;;'
                                 ' "status --long") echo "status: done"; echo "recoverable_errors:'
                                 ' WARNING: deprecated key";; esac')
    assert "recoverable" in bs.wait_for_cloud_init(session).reason


# `dpkg --audit` wording from dpkg's src/main/enquiry.c ("only half configured" paragraph).
AUDIT = """The following packages are only half configured, probably due to problems
configuring them the first time.  The configuration should be retried using
dpkg --configure <package> or the configure menu option in dselect:
 {pkg} {desc}
"""


def fake_dpkg(bindir: Path, state: Path, pkg: str, fixable: bool) -> None:
    """dpkg --audit lists ``pkg`` until --configure -a succeeds (``fixable``), which also
    replays (empties) the journal in ``<state dir>/updates`` as the real one does."""
    state.write_text("broken")
    audit = AUDIT.format(pkg=pkg, desc="half configured package")
    script(bindir, "dpkg", f"""
case "$*" in
  "--audit") [ "$(cat {state})" = broken ] && cat <<'EOF'
{audit}EOF
  exit 0;;
  "--configure -a") echo "Setting up {pkg} ..."; {'echo ok > ' + str(state) + '; rm -f ' + str(state.parent / 'updates') + '/*' if fixable else 'echo "dpkg: error processing package ' + pkg + ' (--configure)" >&2; exit 1'};;
esac""")


def test_dpkg_consistent_is_ok(guest, tmp_path):
    session, bindir = guest
    script(bindir, "dpkg", 'exit 0')
    assert bs.repair_dpkg(session, str(tmp_path / 'updates')).reason == "consistent"


def test_dpkg_interrupted_is_repaired(guest, tmp_path):
    session, bindir = guest
    (tmp_path / "updates").mkdir()
    (tmp_path / "updates" / "0001").write_text("journal")  # pending dpkg journal entry
    fake_dpkg(bindir, tmp_path / "dpkg-state", "tzdata", fixable=True)
    r = bs.repair_dpkg(session, str(tmp_path / 'updates'))
    assert r.status == "changed" and "dpkg --configure -a" in r.reason
    assert (tmp_path / "dpkg-state").read_text().strip() == "ok"


def test_dpkg_broken_nvidia_left_to_driver_other_raises(guest, tmp_path):
    session, bindir = guest
    fake_dpkg(bindir, tmp_path / "dpkg-state", "nvidia-dkms-570-open", fixable=False)
    r = bs.repair_dpkg(session, str(tmp_path / 'updates'))
    assert r.details["broken"] == ["nvidia-dkms-570-open"] and "driver step" in r.reason
    fake_dpkg(bindir, tmp_path / "dpkg-state", "libfoo1", fixable=False)
    with pytest.raises(DeployError) as ei:
        bs.repair_dpkg(session, str(tmp_path / 'updates'))
    assert "libfoo1" in str(ei.value) and ei.value.exit_code == 1


def test_parsers():
    assert bs.parse_dpkg_query("ii  nvidia-driver-570-open 570.195.03-0ubuntu1\n"
                               "iF  nvidia-dkms-570-open 570.195.03-0ubuntu1\n"
                               "dpkg-query: no packages found matching cuda\n") == {
        "nvidia-driver-570-open": ("ii ", "570.195.03-0ubuntu1"),
        "nvidia-dkms-570-open": ("iF ", "570.195.03-0ubuntu1")}
    assert bs.audit_packages(AUDIT.format(pkg="a", desc="x")) == ["a"]
    assert bs.render_sources("lab", "http://10.0.2.2:17080/apt", "./", ["main"],
                             "/etc/apt/keyrings/lab.asc").splitlines()[2:] == [
        "Types: deb", "URIs: http://10.0.2.2:17080/apt", "Suites: ./",
        "Signed-By: /etc/apt/keyrings/lab.asc"]


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_apt_repository_configured_once_then_unchanged(guest, tmp_path, http_dir):
    session, bindir = guest
    root, url = http_dir
    armored = subprocess.run(
        ["gpg", "--batch", "--homedir", str(tmp_path), "--quick-gen-key", "--passphrase", "",
         "lab <lab@example.invalid>", "ed25519", "sign", "never"], capture_output=True)
    if armored.returncode != 0:
        pytest.skip("gpg cannot generate a key here")
    key = subprocess.run(["gpg", "--homedir", str(tmp_path), "--armor", "--export"],
                         capture_output=True, text=True, check=True).stdout
    # key generation started a gpg-agent for this home; it would outlive the test run
    subprocess.run(["gpgconf", "--homedir", str(tmp_path), "--kill", "gpg-agent"], capture_output=True)
    (root / "key.asc").write_text(key)
    calls = tmp_path / "apt-calls"
    script(bindir, "apt-get", f'echo "$*" >> {calls}\n')
    dirs = dict(keyring_dir=str(tmp_path / "keyrings"), sources_dir=str(tmp_path / "sources"),
                lists_dir=str(tmp_path / "lists"))
    (tmp_path / "lists").mkdir()
    repo = {"name": "lab", "url": f"{url}/apt", "suite": "stable", "components": ["main"],
            "key_url": f"{url}/key.asc"}
    res = bs.ensure_apt_repositories(session, [repo], **dirs)
    assert [(r.name, r.status) for r in res] == [("apt repository lab", "changed"),
                                                  ("apt-get update", "changed")]
    assert (tmp_path / "keyrings" / "lab.asc").read_text() == key
    src = (tmp_path / "sources" / "lab.sources").read_text()
    assert f"Signed-By: {tmp_path}/keyrings/lab.asc" in src and "Components: main" in src
    assert calls.read_text().count(" update") == 1
    # lists now exist, nothing changed -> no update
    (tmp_path / "lists" / "127.0.0.1_apt_dists_stable_main_binary-amd64_Packages").touch()
    res = bs.ensure_apt_repositories(session, [repo], **dirs)
    assert [(r.name, r.status, r.reason) for r in res] == [
        ("apt repository lab", "ok", "already configured")]
    assert calls.read_text().count(" update") == 1
    assert "DPkg::Lock::Timeout" in calls.read_text()
    # a rotated key is noticed
    (root / "key.asc").write_text(key.replace("\n\n", "\n\n", 1) + "\n")
    res = bs.ensure_apt_repositories(session, [repo], **dirs)
    assert res[0].status == "changed" and "key" in res[0].reason


def test_invalid_repository_entry():
    with pytest.raises(DeployError) as ei:
        bs.ensure_apt_repositories(object(), [{"name": "Bad Name", "url": "x"}])
    assert "apt_repositories" in str(ei.value)
