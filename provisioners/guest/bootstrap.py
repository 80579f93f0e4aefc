"""Guest bootstrap: make a fresh VM safe for package work, before any component runs.

Order (each step check-then-act, each reported as an :class:`OpResult`):

1. SSH answers (``RemoteSession.connect`` retries while the VM boots).
2. cloud-init finished: ``cloud-init status --wait``. Exit 0 = done, 2 = done with recoverable
   errors (cloud-init >= 23.4, reported but not fatal), 1 = ``status: error`` -> the
   ``cloud-init status --long`` error text is shown (cloud-init docs, "cli: status").
3. No apt/dpkg lock held (cloud-init's package step, unattended-upgrades, apt-daily): the
   holder is read from ``/proc/locks`` (dpkg and apt take fcntl(2) locks, which ``flock``
   cannot see; proc(5) lists them by device:inode with the holder's PID), then named in the
   wait log and in the time-out error.
4. An interrupted dpkg is repaired with ``dpkg --configure -a`` when ``dpkg --audit`` reports
   problems or ``/var/lib/dpkg/updates`` is non-empty (the journal dpkg replays; dpkg(1)).
   Half-configured NVIDIA packages (a failed driver install) are left to the driver step,
   which reinstalls them; anything else failing here stops the run.
5. The catalog's extra apt repositories (``vms[].stack.apt_repositories``: name, url, suite,
   components, key_url): key -> ``/etc/apt/keyrings/<name>.asc`` (or ``.gpg`` for a binary
   key), source -> ``/etc/apt/sources.list.d/<name>.sources`` (deb822 with ``Signed-By``,
   sources.list(5)); ``apt-get update`` only when something changed or no package lists exist.

Also here, shared by the components: :func:`apt_get` (non-interactive, waits for the dpkg lock
itself with ``-o DPkg::Lock::Timeout``, apt >= 1.9.11) and :func:`installed_packages`.
"""
from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from provisioners.errors import DeployError
from provisioners.redact import redact
from provisioners.results import OpResult

LOCK_FILES = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock",
              "/var/cache/apt/archives/lock")
KEYRING_DIR = "/etc/apt/keyrings"
SOURCES_DIR = "/etc/apt/sources.list.d"
MANAGED_HEADER = "# Managed by the GPU LLM machine deployer; local edits are overwritten."
APT_LOCK_TIMEOUT_S = 600
_NVIDIA_PKG = re.compile(r"^(nvidia-|libnvidia-|linux-modules-nvidia-|linux-objects-nvidia-|"
                         r"xserver-xorg-video-nvidia-)")

# Prints one line per held lock: "<lockfile> <pid> <comm> <args...>". /proc/locks field 6 is
# MAJ:MIN:INODE (hex major/minor, decimal inode), field 5 the holder PID (proc(5)).
_LOCK_HOLDERS_SH = r"""
for f in {files}; do
  [ -e "$f" ] || continue
  ino=$(stat -c %i "$f") || continue
  awk -v ino="$ino" '{ n=split($6,a,":"); if (a[n]==ino && $5 ~ /^[0-9]+$/) print $5 }' /proc/locks |
  sort -u | while read -r pid; do
    [ -d "/proc/$pid" ] || continue
    printf '%s %s %s %s\n' "$f" "$pid" "$(cat /proc/$pid/comm 2>/dev/null)" \
      "$(tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | cut -c1-200)"
  done
done
"""


@dataclass(frozen=True)
class LockHolder:
    """A process holding an apt/dpkg lock: ``lock`` path, ``pid``, ``comm`` (process name) and
    ``args`` (command line, cut to 200 characters)."""

    lock: str
    pid: int
    comm: str
    args: str

    def __str__(self) -> str:
        return f"PID {self.pid} ({self.comm}: {self.args.strip() or '?'}) on {self.lock}"


def parse_lock_holders(text: str) -> list[LockHolder]:
    """Parse the output of the lock-holder probe (``<lock> <pid> <comm> <args>`` per line)."""
    out = []
    for line in (text or "").splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[1].isdigit():
            out.append(LockHolder(parts[0], int(parts[1]), parts[2],
                                  parts[3] if len(parts) > 3 else ""))
    return out


def _op(name: str, status: str, reason: str, start: float, **details: Any) -> OpResult:
    return OpResult(name, status, reason, time.monotonic() - start, dict(details))


# --------------------------------------------------------------------------------------------
# apt helpers shared by the components


def apt_get(session: Any, args: str, *, timeout_s: float = 1800, stream: bool = True,
            check: bool = True, idempotent: bool = True):
    """Run ``apt-get <args>`` as root, non-interactive (``DEBIAN_FRONTEND=noninteractive``,
    keep existing config files), waiting up to :data:`APT_LOCK_TIMEOUT_S` seconds for the
    dpkg lock instead of failing. Returns the ``CommandResult``; raises
    ``RemoteCommandError`` when ``check`` and apt fails. Only ``install``/``update`` style
    operations that are safe to repeat should keep ``idempotent=True``."""
    cmd = (f"apt-get -o DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S} "
           "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
           f"-o APT::Color=0 -q {args}")
    return session.run(cmd, sudo=True, timeout_s=timeout_s, stream=stream, check=check,
                       env={"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "l"},
                       idempotent=idempotent)


DPKG_QUERY = "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n'"


def parse_dpkg_query(text: str) -> dict[str, tuple[str, str]]:
    """Parse ``dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n'`` output into
    ``package -> (status, version)``. ``status`` is the 3-letter abbreviation
    (``"ii "`` installed, ``"iF "`` half-configured, ``"un "`` not installed, ``"rc "``
    config files only; dpkg-query(1)). Error lines (``dpkg-query: no packages found ...``)
    are skipped."""
    out: dict[str, tuple[str, str]] = {}
    for line in (text or "").splitlines():
        if line.startswith("dpkg-query:") or len(line) < 4:
            continue
        status, rest = line[:3], line[3:].strip()
        if not re.fullmatch(r"[a-z][a-zA-Z][a-zA-Z ]", status):
            continue
        pkg, _, version = rest.partition(" ")
        if pkg:
            out[pkg] = (status, version.strip())
    return out


def installed_packages(session: Any, patterns: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``package -> (status, version)`` for the dpkg patterns (e.g. ``"nvidia-driver-*"``); see
    :func:`parse_dpkg_query`. Read-only, one round trip."""
    pats = " ".join(shlex.quote(p) for p in patterns)
    r = session.run(f"{DPKG_QUERY} {pats} 2>/dev/null; true", timeout_s=60)
    return parse_dpkg_query(r.stdout)


def is_installed(status: str) -> bool:
    """``ii`` (installed and configured)."""
    return status.startswith("ii")


# --------------------------------------------------------------------------------------------
# bootstrap steps


def wait_for_cloud_init(session: Any, timeout_s: float = 1800) -> OpResult:
    """Wait for cloud-init to finish. Raises :class:`DeployError` with ``cloud-init status
    --long`` when it ended in ``status: error`` or did not finish in ``timeout_s`` seconds."""
    start = time.monotonic()
    if session.run("command -v cloud-init", check=False, timeout_s=30).exit_code != 0:
        return _op("cloud-init", "ok", "cloud-init not installed", start)
    r = session.run("cloud-init status --wait", check=False, timeout_s=timeout_s)
    text = r.stdout + r.stderr
    if r.exit_code == 0 and "status: error" not in text:
        return _op("cloud-init", "ok", "done", start)
    long = session.run("cloud-init status --long", check=False, timeout_s=60)
    long_text = (long.stdout + long.stderr).strip()
    if r.exit_code == 2 and "status: error" not in text:
        # cloud-init >= 23.4: done, with recoverable errors (deprecations, warnings).
        session.log(f"cloud-init finished with recoverable errors:\n{long_text}")
        return _op("cloud-init", "ok", "done (recoverable errors, see log)", start,
                   detail=redact(long_text))
    if r.exit_code in (124, 137):
        what, remedy = (f"cloud-init did not finish within {timeout_s:.0f} s",
                        "look at /var/log/cloud-init-output.log on the VM; raise the timeout "
                        "if the VM is just slow")
    else:
        what, remedy = ("cloud-init failed in the VM (status: error)",
                        "read the errors above and /var/log/cloud-init.log on the VM; fix the "
                        "catalog's cloud_init settings or the image, then recreate the VM")
    raise DeployError(what=what, cause=redact(long_text or text.strip()), remedy=remedy,
                      command="cloud-init status --wait", exit_code=r.exit_code,
                      evidence={"cloud-init status --long": redact(long_text)})


def lock_holders(session: Any, files: Iterable[str] = LOCK_FILES) -> list[LockHolder]:
    """Processes holding one of the lock ``files`` right now (read-only; runs with sudo to
    read root processes' command lines)."""
    script = _LOCK_HOLDERS_SH.replace("{files}", " ".join(shlex.quote(f) for f in files))
    r = session.run(script, sudo=True, check=False, timeout_s=60)
    return parse_lock_holders(r.stdout)


def wait_for_apt_locks(session: Any, timeout_s: float = 900, poll_s: float = 5.0,
                       sleep: Callable[[float], None] = time.sleep,
                       files: Iterable[str] = LOCK_FILES) -> OpResult:
    """Wait until no process holds an apt/dpkg lock (:data:`LOCK_FILES`).

    Returns ``ok`` ("free" or "waited N s for ..."). Raises :class:`DeployError` naming the
    holder process(es) after ``timeout_s`` seconds."""
    start = time.monotonic()
    seen: set[tuple[int, str]] = set()
    files = tuple(files)
    holders = lock_holders(session, files)
    while holders:
        for h in holders:
            if (h.pid, h.lock) not in seen:
                seen.add((h.pid, h.lock))
                session.log(f"waiting for apt/dpkg lock held by {h}")
        if time.monotonic() - start >= timeout_s:
            names = "; ".join(str(h) for h in holders)
            raise DeployError(
                what=f"apt/dpkg is still locked after {timeout_s:.0f} s",
                cause=f"held by {names}",
                remedy="let it finish (`systemctl status unattended-upgrades apt-daily-upgrade` "
                       "on the VM), or stop it (`sudo systemctl stop unattended-upgrades`), "
                       "then re-run",
                evidence={"lock holders": names})
        sleep(poll_s)
        holders = lock_holders(session, files)
    if seen:
        who = ", ".join(sorted({f"{pid}" for pid, _ in seen}))
        return _op("apt locks", "ok", f"waited {time.monotonic() - start:.0f} s for PID {who}",
                   start)
    return _op("apt locks", "ok", "free", start)


DPKG_UPDATES = "/var/lib/dpkg/updates"


def _dpkg_state_sh(updates_dir: str) -> str:
    return (f"dpkg --audit 2>&1; echo '@@updates'; "
            f"ls -A {shlex.quote(updates_dir)} 2>/dev/null | head -n 20")


def parse_dpkg_state(text: str) -> tuple[str, list[str]]:
    """Split the dpkg state probe into (``dpkg --audit`` text, pending journal file names)."""
    audit, _, updates = (text or "").partition("@@updates")
    return audit.strip(), [u for u in updates.split() if u]


def audit_packages(audit: str) -> list[str]:
    """Package names listed by ``dpkg --audit`` (its lines are ``" pkg   description"``
    under each explanation paragraph)."""
    pkgs = []
    for line in audit.splitlines():
        m = re.match(r"^ (\S+)\s", line)
        if m and not m.group(1).endswith(":"):
            pkgs.append(m.group(1))
    return pkgs


def repair_dpkg(session: Any, updates_dir: str = DPKG_UPDATES) -> OpResult:
    """``dpkg --configure -a`` when dpkg was interrupted (see module docstring). Returns
    ``ok`` (nothing to do / only NVIDIA packages left broken, for the driver step) or
    ``changed``. Raises :class:`DeployError` when other packages stay broken."""
    start = time.monotonic()
    state = session.run(_dpkg_state_sh(updates_dir), sudo=True, check=False, timeout_s=120)
    audit, updates = parse_dpkg_state(state.stdout)
    if not audit and not updates:
        return _op("dpkg", "ok", "consistent", start)
    session.log(f"dpkg needs repair (audit: {audit[:300]!r}, journal: {len(updates)} entries); "
                "running dpkg --configure -a")
    r = session.run("dpkg --configure -a", sudo=True, check=False, stream=True, timeout_s=1800,
                    env={"DEBIAN_FRONTEND": "noninteractive"})
    after = session.run(_dpkg_state_sh(updates_dir), sudo=True, check=False, timeout_s=120)
    audit2, updates2 = parse_dpkg_state(after.stdout)
    if not audit2 and not updates2:
        return _op("dpkg", "changed", "repaired an interrupted dpkg (dpkg --configure -a)", start)
    broken = audit_packages(audit2)
    if broken and not updates2 and all(_NVIDIA_PKG.match(p) for p in broken):
        return _op("dpkg", "changed" if r.exit_code == 0 else "ok",
                   "NVIDIA packages still half-configured; the driver step reinstalls them: "
                   + ", ".join(broken), start, broken=broken)
    raise DeployError(
        what="dpkg is in an inconsistent state and `dpkg --configure -a` did not fix it",
        cause=redact("\n".join((r.stdout + r.stderr).splitlines()[-40:]) or audit2),
        remedy="fix the package named above on the VM (often `sudo apt-get -f install`), "
               "then re-run", command="dpkg --configure -a", exit_code=r.exit_code,
        evidence={"dpkg --audit": redact(audit2)})


# --------------------------------------------------------------------------------------------
# extra apt repositories


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def render_sources(name: str, url: str, suite: str, components: Iterable[str] | str | None,
                   keyring: str) -> str:
    """The deb822 ``.sources`` file for one repository (sources.list(5)). A flat repository
    (suite ending in ``/``) has no ``Components``."""
    comps = components.split() if isinstance(components, str) else list(components or [])
    lines = [MANAGED_HEADER, f"# repository: {name}", "Types: deb", f"URIs: {url}",
             f"Suites: {suite}"]
    if comps and not suite.endswith("/"):
        lines.append(f"Components: {' '.join(comps)}")
    lines.append(f"Signed-By: {keyring}")
    return "\n".join(lines) + "\n"


_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def download_sh(url: str, dest: str) -> str:
    """Bash that downloads ``url`` to ``dest`` (a shell word, may be ``"$tmp"``) on the guest
    with curl, else wget, else python3 (a minimal image may lack curl); fails on HTTP errors."""
    q = shlex.quote(url)
    return (f"if command -v curl >/dev/null; then curl -fsSL --retry 3 -o {dest} {q}; "
            f"elif command -v wget >/dev/null; then wget -q -O {dest} {q}; "
            "else python3 -c 'import sys,urllib.request; "
            f"urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' {q} {dest}; fi")


def ensure_key(session: Any, name: str, key_url: str,
               keyring_dir: str = KEYRING_DIR) -> tuple[str, bool]:
    """Download ``key_url`` on the guest and install it as ``<keyring_dir>/<name>.asc``
    (armored) or ``.gpg`` (binary) when it differs. Returns (keyring path, changed)."""
    base = f"{keyring_dir}/{name}"
    script = (
        "set -e; tmp=$(mktemp); trap 'rm -f \"$tmp\"' EXIT; "
        + download_sh(key_url, '"$tmp"') + "; "
        "if head -c 64 \"$tmp\" | grep -q -- '-----BEGIN PGP'; then ext=asc; else ext=gpg; fi; "
        f"dest={shlex.quote(base)}.$ext; install -d -m 0755 {shlex.quote(keyring_dir)}; "
        "if cmp -s \"$tmp\" \"$dest\"; then echo \"unchanged $dest\"; "
        "else install -m 0644 -o root -g root \"$tmp\" \"$dest\"; echo \"changed $dest\"; fi")
    r = session.run(script, sudo=True, timeout_s=180)
    status, _, path = r.stdout.strip().splitlines()[-1].partition(" ")
    return path, status == "changed"


def ensure_apt_repositories(session: Any, repos: Iterable[Any], *,
                            keyring_dir: str = KEYRING_DIR, sources_dir: str = SOURCES_DIR,
                            lists_dir: str = "/var/lib/apt/lists") -> list[OpResult]:
    """Configure each repository (see module docstring) and run ``apt-get update`` when one
    changed or the package lists are missing. Raises :class:`DeployError` for an invalid
    entry (bad name, missing url/suite/key_url). The directories are parameters for tests."""
    results: list[OpResult] = []
    changed_any = False
    for repo in repos or []:
        start = time.monotonic()
        name = _field(repo, "name")
        url, suite = _field(repo, "url"), _field(repo, "suite")
        key_url, comps = _field(repo, "key_url"), _field(repo, "components") or []
        if not name or not _NAME.match(str(name)) or not url or not suite or not key_url:
            raise DeployError(
                what=f"invalid apt repository entry {name!r} in vms[].stack.apt_repositories",
                cause="each entry needs name (lower-case word), url, suite and key_url",
                remedy="e.g. {name: lab, url: http://10.0.2.2:17080/apt, suite: stable, "
                       "components: [main], key_url: http://10.0.2.2:17080/apt/key.asc}")
        keyring, key_changed = ensure_key(session, name, str(key_url), keyring_dir)
        content = render_sources(name, str(url), str(suite), comps, keyring)
        src_changed = session.put_file(f"{sources_dir}/{name}.sources", content, mode=0o644,
                                       owner="root:root")
        changed = key_changed or src_changed
        changed_any |= changed
        what = [w for w, c in (("key", key_changed), ("source", src_changed)) if c]
        results.append(_op(f"apt repository {name}", "changed" if changed else "ok",
                           f"wrote {' and '.join(what)}" if changed else "already configured",
                           start))
    start = time.monotonic()
    lists = session.run(f"ls {shlex.quote(lists_dir)}/ 2>/dev/null | grep -c '_Packages' || true",
                        timeout_s=30).stdout.strip()
    missing = lists in ("", "0")
    if changed_any or missing:
        apt_get(session, "update", timeout_s=900)
        results.append(_op("apt-get update", "changed",
                           "repositories changed" if changed_any else "no package lists yet",
                           start))
    return results


def bootstrap(session: Any, catalog: Any, vm: Any = None, *, ssh_wait_s: float = 600,
              cloud_init_timeout_s: float = 1800, lock_timeout_s: float = 900) -> list[OpResult]:
    """Run the bootstrap steps of the module docstring on ``vm`` (a catalog VM; reads
    ``vm.stack.apt_repositories``; ``catalog`` is the whole catalog, unused today - called as
    ``bootstrap(session, catalog, vm)`` by the pipeline; ``bootstrap(session, vm)`` works too).
    Returns one :class:`OpResult` per step; raises :class:`DeployError` on the first step that
    cannot be completed."""
    if vm is None:
        vm = catalog
    start = time.monotonic()
    session.connect(wait_s=ssh_wait_s)
    results = [_op("ssh", "ok", f"{session.user}@{session.host}:{session.port} answers", start)]
    results.append(wait_for_cloud_init(session, cloud_init_timeout_s))
    results.append(wait_for_apt_locks(session, lock_timeout_s))
    results.append(repair_dpkg(session))
    stack = _field(vm, "stack")
    repos = _field(stack, "apt_repositories", []) if stack is not None else []
    results.extend(ensure_apt_repositories(session, repos))
    return results


__all__ = ["bootstrap", "wait_for_cloud_init", "wait_for_apt_locks", "repair_dpkg",
           "ensure_apt_repositories", "ensure_key", "render_sources", "apt_get",
           "installed_packages", "parse_dpkg_query", "download_sh", "parse_lock_holders", "lock_holders",
           "parse_dpkg_state", "audit_packages", "is_installed", "LockHolder", "LOCK_FILES",
           "DPKG_QUERY"]
