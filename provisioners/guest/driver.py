"""The ``driver`` component: NVIDIA's OPEN kernel modules, of a recent enough branch.

facts -> plan -> apply -> verify (see :mod:`provisioners.guest.base`).

Facts (ONE SSH round trip, :func:`provisioners.guest.units.probe`): ``ubuntu-drivers devices``
and ``list``, the installed ``nvidia-driver-*`` packages (dpkg-query), ``modinfo -F license
nvidia``, ``/proc/driver/nvidia/version`` (the LOADED module), ``nvidia-smi --query-gpu``,
``/var/run/reboot-required``, ``mokutil --sb-state``, ``lspci -nnk -d 10de:`` and the boot id.

Decision (:func:`choose_driver`, pure): the highest ``-open`` branch >= the minimum, where the
minimum is the larger of the catalog's ``stack.driver.min_branch`` and the GPU's own
(:func:`provisioners.gpus.gpu_info`). Never the closed flavour on a card that needs the open
modules (Blackwell: the closed module fails with ``NVRM: ... requires use of the NVIDIA open
kernel modules`` / ``RmInitAdapter failed!``, DESIGN.md section 4), even when
``ubuntu-drivers devices`` marks it ``recommended`` (it does, corpus
``ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt``). No open flavour -> a
:class:`DeployError`; there is no closed fallback.

Non ``-server`` flavours are preferred: Ubuntu's ``-server`` packages follow NVIDIA's
data-centre release trains (LTSB/ERD, validated for Tesla/data-centre boards), while GeForce
boards such as the RTX 5060 Ti get new-hardware support in the regular production branches,
which are also what ``ubuntu-drivers`` recommends on non-server installs. A ``-server-open``
package is chosen only when no regular open package of a high enough branch is offered.

An installed open driver of branch >= the minimum is kept as it is (Ubuntu may move the
570 metapackage to 580; DESIGN.md section 4): the plan is empty, there is no upgrade.

Apply: ``apt-get install nvidia-driver-NNN-open`` (plus the prebuilt, signed
``linux-modules-nvidia-NNN-open-*`` package that ``ubuntu-drivers list`` names, when the
repository has it - that is what ``ubuntu-drivers install`` does, and it keeps Secure Boot
working); then a reboot (the pipeline's ``reboot(session)`` callable, which uses the PVE API,
else ``systemctl reboot`` over SSH) and a wait for the new boot id. Failures carry the
command, exit code, the DKMS make.log / apt term.log tail and a remedy; a Secure Boot
rejection gets its own diagnosis.
"""
from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from provisioners.errors import DeployError
from provisioners.guest.base import Check, Facts, vm_get
from provisioners.guest.bootstrap import DPKG_QUERY, apt_get, is_installed, parse_dpkg_query
from provisioners.parsers import dmesg as dmesg_parser
from provisioners.parsers import lspci as lspci_parser
from provisioners.parsers import nvidia_smi
from provisioners.parsers.ubuntu_drivers import (
    DriverOption, parse_devices, parse_list, parse_package_name,
)
from provisioners.redact import redact
from provisioners.results import Change, OpResult

OPEN_LICENSE = "Dual MIT/GPL"        # modinfo -F license nvidia of the open module
CLOSED_LICENSE = "NVIDIA"            # ... of the proprietary module
SMI_QUERY = "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader"
SMI_FIELDS = ["name", "memory.total", "driver_version"]


# --------------------------------------------------------------------------------------------
# GPU knowledge (provisioners.gpus, owned by #6) with a conservative fallback


@dataclass(frozen=True)
class GpuNeeds:
    """What the driver step needs to know about a GPU: it only works with the open kernel
    modules (``open_modules_only``) and the lowest driver branch that supports it
    (``min_driver_branch``, None = unknown). ``known`` is False when the PCI id is not in the
    GPU table."""

    pci_id: str
    open_modules_only: bool
    min_driver_branch: int | None
    known: bool


def gpu_needs(pci_id: str) -> GpuNeeds:
    """Look ``pci_id`` up in :func:`provisioners.gpus.gpu_info`. Unknown cards (or a missing
    table) give ``open_modules_only=False`` and no minimum: the catalog's flavour and
    ``min_branch`` then decide alone."""
    info = None
    try:
        from provisioners import gpus  # noqa: PLC0415 (owned by another module; optional)
        info = gpus.gpu_info(pci_id)
    except (ImportError, AttributeError, KeyError, LookupError):
        info = None
    except DeployError:
        info = None
    if info is None:
        return GpuNeeds(pci_id, False, None, False)
    get = (lambda k: info.get(k)) if isinstance(info, dict) else (lambda k: getattr(info, k, None))
    branch = get("min_driver_branch")
    return GpuNeeds(pci_id, bool(get("open_modules_only")),
                    int(branch) if branch is not None else None, True)


# --------------------------------------------------------------------------------------------
# the decision


def choose_driver(options: Iterable[DriverOption], pci_id: str, flavour: str = "open",
                  min_branch: int = 0, needs: GpuNeeds | None = None) -> DriverOption:
    """Pick the driver package to install (pure; see the module docstring for the rules).

    Args:
        options: what ``ubuntu-drivers devices`` (for this GPU) and ``list`` offer; ``xserver``
            and other non-NVIDIA entries are ignored.
        pci_id: the GPU's ``"10de:2d04"``.
        flavour: the catalog's ``stack.driver.flavour``: ``"open"`` or ``"closed"``.
        min_branch: the catalog's minimum driver branch (e.g. 570).
        needs: GPU facts; default :func:`gpu_needs` (pci_id).

    Returns the chosen :class:`DriverOption` (``open`` True unless ``flavour="closed"`` on a card
    that allows it). Raises :class:`DeployError` when no package fits, or when ``closed`` is
    asked for a card that needs the open modules.
    """
    needs = needs or gpu_needs(pci_id)
    floor = max(int(min_branch or 0), needs.min_driver_branch or 0)
    want_open = flavour != "closed" or needs.open_modules_only
    if flavour == "closed" and needs.open_modules_only:
        raise DeployError(
            what=f"the catalog asks for the closed NVIDIA driver, but GPU {pci_id} only works "
                 "with the open kernel modules",
            cause="the proprietary module refuses this GPU ('requires use of the NVIDIA open "
                  "kernel modules', then 'RmInitAdapter failed!')",
            remedy="set vms[].stack.driver.flavour to open in infrastructure-catalog.yml")
    seen: dict[str, DriverOption] = {}
    for opt in options:
        if opt.branch is None or not opt.package.startswith("nvidia-"):
            continue
        if opt.package not in seen or opt.recommended:
            seen[opt.package] = opt
    offered = sorted(seen.values(), key=lambda o: (o.branch or 0, o.package))
    fitting = [o for o in offered if o.branch >= floor and o.open == want_open]
    if not fitting:
        kind = "open (-open)" if want_open else "closed"
        listing = ", ".join(o.package for o in offered) or "none"
        raise DeployError(
            what=f"no {kind} NVIDIA driver of branch >= {floor} is available for GPU {pci_id}",
            cause=f"ubuntu-drivers offers: {listing}"
                  + ("; the closed driver is not a fallback for this card"
                     if want_open and needs.open_modules_only else ""),
            remedy=("add a repository that publishes nvidia-driver-NNN-open (NNN >= "
                    f"{floor}) under vms[].stack.apt_repositories (e.g. the graphics-drivers "
                    "PPA or NVIDIA's CUDA repository), or update the VM's package lists, "
                    "then re-run"))
    # Regular flavour before -server, then the highest branch (module docstring says why).
    return max(fitting, key=lambda o: (not o.server, o.branch, o.recommended))


def options_for_gpu(devices_text: str, list_text: str, pci_id: str) -> list[DriverOption]:
    """Driver options for ``pci_id``: the ``driver`` lines of its ``ubuntu-drivers devices``
    block, then every ``ubuntu-drivers list`` entry (which only lists drivers for the
    machine's hardware). The ``list`` entries carry ``kernel_modules_provider``."""
    opts: list[DriverOption] = []
    for dev in parse_devices(devices_text):
        if dev.pci_id is None or dev.pci_id == pci_id.lower():
            opts.extend(dev.drivers)
    providers = {o.package: o for o in parse_list(list_text)}
    merged: list[DriverOption] = []
    for o in opts:
        p = providers.get(o.package)
        if p and p.kernel_modules_provider and not o.kernel_modules_provider:
            o.kernel_modules_provider = p.kernel_modules_provider
        merged.append(o)
    names = {o.package for o in merged}
    merged.extend(o for o in providers.values() if o.package not in names)
    return merged


# --------------------------------------------------------------------------------------------
# facts


PROBES = {
    "has_ubuntu_drivers": "command -v ubuntu-drivers",
    "candidates": "apt-cache pkgnames nvidia-driver- 2>/dev/null | sort",
    "devices": "ubuntu-drivers devices 2>/dev/null",
    "list": "ubuntu-drivers list 2>/dev/null",
    "installed": f"{DPKG_QUERY} 'nvidia-driver-*' 'linux-modules-nvidia-*' 'nvidia-dkms-*' "
                 "2>/dev/null; true",
    "license": "modinfo -F license nvidia",
    "module_version": "modinfo -F version nvidia",
    "loaded": "cat /proc/driver/nvidia/version",
    "smi": SMI_QUERY,
    "reboot_required": "test -e /var/run/reboot-required && "
                       "{ echo required; cat /var/run/reboot-required.pkgs 2>/dev/null; }",
    "secure_boot": "command -v mokutil >/dev/null || exit 3; mokutil --sb-state",
    "lspci": "lspci -nnk -d 10de:",
    "boot_id": "cat /proc/sys/kernel/random/boot_id",
    "kernel": "uname -r",
}


def facts_from_outputs(outputs: dict[str, tuple[int, str]], pci_id: str) -> Facts:
    """Build :class:`Facts` from probe outputs (name -> (exit code, text)); pure, so that the
    plan is tested on corpus outputs. ``values`` keys: ``options`` (list[DriverOption]),
    ``ubuntu_drivers`` (bool), ``installed`` (package -> (status, version)),
    ``installed_driver`` (DriverOption of the configured ``nvidia-driver-*`` or None),
    ``half_configured`` (list of NVIDIA packages dpkg left unconfigured), ``license``,
    ``module_version``, ``loaded_version``, ``loaded_open``, ``smi`` (dict or None),
    ``smi_failure`` (kind or None), ``reboot_required`` (bool), ``reboot_pkgs``,
    ``secure_boot`` (True/False/None = unknown), ``gpu`` (PciDevice or None), ``boot_id``."""
    def out(name: str) -> str:
        return outputs.get(name, (1, ""))[1]

    def ok(name: str) -> bool:
        return outputs.get(name, (1, ""))[0] == 0

    v: dict[str, Any] = {}
    v["ubuntu_drivers"] = ok("has_ubuntu_drivers")
    if v["ubuntu_drivers"]:
        v["options"] = options_for_gpu(out("devices"), out("list"), pci_id)
        v["options_source"] = "ubuntu-drivers"
    else:
        # Until ubuntu-drivers-common is installed, the archive's package names stand in
        # (the plan installs the tool first and decides again on its output).
        v["options"] = [parse_package_name(p) for p in out("candidates").split()
                        if p.startswith("nvidia-driver-")]
        v["options_source"] = "apt-cache"
    installed = parse_dpkg_query(out("installed"))
    v["installed"] = installed
    drivers = [parse_package_name(p) for p, (st, _) in installed.items()
               if p.startswith("nvidia-driver-") and is_installed(st)]
    drivers = [d for d in drivers if d.branch is not None]
    v["installed_driver"] = max(drivers, key=lambda d: (d.branch, d.open)) if drivers else None
    v["half_configured"] = sorted(p for p, (st, _) in installed.items()
                                  if st[0] == "i" and st[1] != "i")
    v["license"] = out("license").strip() if ok("license") else None
    v["module_version"] = out("module_version").strip() if ok("module_version") else None
    loaded = out("loaded") if ok("loaded") else ""
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", loaded)
    v["loaded_version"] = m.group(1) if m else None
    v["loaded_open"] = ("Open Kernel Module" in loaded) if loaded else None
    smi_text = out("smi")
    rows = nvidia_smi.parse_query_csv(smi_text, SMI_FIELDS) if ok("smi") else []
    v["smi"] = rows[0] if rows else None
    v["smi_failure"] = None if rows else (nvidia_smi.classify_failure(smi_text) or
                                          ("not-installed" if outputs.get("smi", (127,))[0] == 127
                                           else "failed"))
    v["reboot_required"] = ok("reboot_required")
    v["reboot_pkgs"] = [p for p in out("reboot_required").split()[1:]] if ok("reboot_required") \
        else []
    sb = out("secure_boot").lower() if outputs.get("secure_boot", (3,))[0] != 3 else ""
    v["secure_boot"] = True if "secureboot enabled" in sb else False if "disabled" in sb else None
    gpus = [d for d in lspci_parser.parse(out("lspci")) if d.vendor_device == pci_id.lower()]
    v["gpu"] = gpus[0] if gpus else None
    v["lspci_ok"] = ok("lspci")
    v["boot_id"] = out("boot_id").strip()
    v["kernel"] = out("kernel").strip()
    raw = {k: redact(t) for k, (_, t) in outputs.items()}
    return Facts(values=v, raw=raw)


# --------------------------------------------------------------------------------------------
# the component


def _default_reboot(session: Any) -> None:
    # The connection may drop before systemctl returns: that is the reboot happening.
    try:
        session.run("systemctl reboot", sudo=True, check=False, timeout_s=30, idempotent=False)
    except DeployError:
        pass


class DriverComponent:
    """The ``driver`` component for one catalog VM.

    Args:
        vm: catalog VM (reads ``gpu.expected.pci_id|name|memory_mib``,
            ``stack.driver.flavour|min_branch``).
        reboot: ``reboot(session)`` that restarts the VM (the pipeline passes one using the PVE
            API, ``POST /nodes/{node}/qemu/{vmid}/status/reboot``); default ``systemctl reboot``
            over SSH.
        reboot_timeout_s: how long to wait for the VM to come back, seconds.
        install_timeout_s: apt-get install limit, seconds (DKMS builds take minutes).
        diagnose: ``diagnose(captures) -> Diagnosis`` (default: :mod:`provisioners.doctor`
            when present) to add findings to failures.
    """

    name = "driver"

    def __init__(self, vm: Any, *, reboot: Callable[[Any], None] | None = None,
                 reboot_timeout_s: float = 900, install_timeout_s: float = 2400,
                 diagnose: Callable[[dict[str, str]], Any] | None = None) -> None:
        self.vm = vm
        self.pci_id = str(vm_get(vm, "gpu.expected.pci_id", "")).lower()
        self.flavour = str(vm_get(vm, "stack.driver.flavour", "open"))
        self.min_branch = int(vm_get(vm, "stack.driver.min_branch", 0))
        self.expected_name = vm_get(vm, "gpu.expected.name")
        self.expected_mib = vm_get(vm, "gpu.expected.memory_mib")
        self.reboot = reboot or _default_reboot
        self.reboot_timeout_s = reboot_timeout_s
        self.install_timeout_s = install_timeout_s
        self._diagnose = diagnose

    # -- facts ----------------------------------------------------------------------------------

    def facts(self, session: Any) -> Facts:
        """All probes of :data:`PROBES` in one round trip (read-only)."""
        from provisioners.guest.units import probe  # shared batching helper (#4, vllm/ollama)
        outs = probe(session, PROBES, sudo=True, timeout_s=180)
        return facts_from_outputs({k: (o.exit_code, o.output) for k, o in outs.items()},
                                  self.pci_id)

    # -- plan -----------------------------------------------------------------------------------

    def choose(self, facts: Facts) -> DriverOption:
        """:func:`choose_driver` on the facts' options."""
        return choose_driver(facts.values["options"], self.pci_id, self.flavour, self.min_branch)

    def plan(self, facts: Facts) -> list[Change]:
        """Pure. ``[]`` when an open driver of a high enough branch is installed, loaded and
        nvidia-smi answers. Otherwise ``create`` (install), ``update`` (wrong flavour or branch
        installed), ``needs-restart`` (installed but not loaded / reboot pending) or ``refuse``
        (no GPU in the guest, no fitting package: ``reason`` explains, apply raises)."""
        v = facts.values
        floor = max(self.min_branch, gpu_needs(self.pci_id).min_driver_branch or 0)
        if v.get("lspci_ok") and v.get("gpu") is None:
            return [Change("refuse", "driver", "gpu", None, self.pci_id,
                           f"GPU {self.pci_id} is not visible in the guest (lspci -nn -d 10de:); "
                           "check the VM's hostpci setting and the PVE PCI mapping")]
        cur: DriverOption | None = v.get("installed_driver")
        good = cur is not None and cur.open and (cur.branch or 0) >= floor \
            and not v.get("half_configured")
        if self.flavour == "closed" and not gpu_needs(self.pci_id).open_modules_only:
            good = cur is not None and (cur.branch or 0) >= floor and not v.get("half_configured")
        if good:
            loaded_ok = self.flavour == "closed" or (
                v.get("license") == OPEN_LICENSE and v.get("loaded_open") is not False)
            # nvidia-smi answering proves a module is loaded (/proc/driver/nvidia may be absent).
            running = v.get("smi") is not None
            # Only a reboot the driver needs is ours to do; an empty .pkgs list is ambiguous.
            pkgs = v.get("reboot_pkgs", [])
            pending = bool(v.get("reboot_required")) and (not pkgs or any(
                p.startswith(("nvidia", "linux-modules-nvidia", "libnvidia")) for p in pkgs))
            if loaded_ok and running and not pending:
                return []
            why = ("reboot pending for " + ", ".join(v.get("reboot_pkgs", [])[:5])) if pending \
                else f"installed {cur.package} is not running (nvidia-smi: {v.get('smi_failure')})"
            return [Change("needs-restart", "driver", "loaded", v.get("loaded_version"),
                           cur.package, why)]
        tool: list[Change] = []
        if not v.get("ubuntu_drivers"):
            tool = [Change("create", "driver", "ubuntu-drivers", None, "ubuntu-drivers-common",
                           "lists the drivers for this GPU; the package choice below is from "
                           "apt-cache and is made again with ubuntu-drivers")]
        try:
            choice = self.choose(facts)
        except DeployError as exc:
            if tool:
                # Without ubuntu-drivers the archive names are only a preview: decide after
                # installing it (apply plans again).
                return tool + [Change("create", "driver", "package",
                                      cur.package if cur else None, None,
                                      "chosen from ubuntu-drivers once it is installed "
                                      f"(apt-cache preview: {exc.what})")]
            return [Change("refuse", "driver", "package", cur.package if cur else None,
                           None, f"{exc.what}: {exc.cause} -- fix: {exc.remedy}")]
        if cur is None:
            return tool + [Change("create", "driver", "package", None, choice.package,
                           f"highest open branch >= {floor} offered"
                           + (f" (ubuntu-drivers recommends {_recommended_name(v)}, not used: "
                              "this GPU needs the open modules)"
                              if _recommended_name(v) and _recommended_name(v) != choice.package
                              else ""))]
        why = ("half-configured: " + ", ".join(v["half_configured"])) if v.get("half_configured") \
            else (f"{cur.package} is the closed flavour" if not cur.open
                  else f"branch {cur.branch} < {floor}")
        return tool + [Change("update", "driver", "package", cur.package, choice.package, why)]

    # -- apply ----------------------------------------------------------------------------------

    def apply(self, session: Any, facts: Facts, changes: list[Change]) -> list[OpResult]:
        """Carry out :meth:`plan`'s changes (see module docstring); ``[]`` changes -> one
        ``ok`` result. Raises :class:`DeployError` for a refusal or a failed install/reboot."""
        if not changes:
            cur = facts.values.get("installed_driver")
            version = (facts.values.get("smi") or {}).get("driver_version") \
                or facts.values.get("loaded_version")
            return [OpResult("driver", "ok", f"{cur.package if cur else '?'} installed and "
                             f"loaded (driver {version})", 0.0)]
        results: list[OpResult] = []
        if any(ch.field == "ubuntu-drivers" for ch in changes):
            start = time.monotonic()
            apt_get(session, "install -y ubuntu-drivers-common", timeout_s=900)
            results.append(OpResult("ubuntu-drivers", "changed", "installed ubuntu-drivers-common",
                                    time.monotonic() - start))
            facts = self.facts(session)
            changes = self.plan(facts)
            if not changes:
                return results + self.apply(session, facts, changes)
        for ch in changes:
            if ch.action == "refuse":
                cause, _, remedy = ch.reason.partition(" -- fix: ")
                raise DeployError(what=f"driver step refused: {cause.split(';')[0].split(': ')[0]}",
                                  cause=cause,
                                  remedy=remedy or "see the cause", evidence=dict(facts.raw))
        needs_reboot = False
        for ch in changes:
            if ch.action in ("create", "update"):
                results.append(self._install(session, facts, ch.desired))
                needs_reboot = True
            elif ch.action == "needs-restart":
                needs_reboot = True
        if needs_reboot:
            results.append(self._reboot_and_wait(session, facts))
            self._check_loaded(session)
        return results

    def _packages_for(self, session: Any, facts: Facts, package: str) -> list[str]:
        pkgs = [package]
        opt = next((o for o in facts.values.get("options", []) if o.package == package), None)
        provider = opt.kernel_modules_provider if opt else None
        if provider and provider.startswith("linux-modules-nvidia-"):
            have = session.run(f"apt-cache show --no-all-versions {shlex.quote(provider)} "
                               ">/dev/null 2>&1", check=False, timeout_s=60)
            if have.exit_code == 0:
                pkgs.append(provider)
        return pkgs

    def _install(self, session: Any, facts: Facts, package: str) -> OpResult:
        start = time.monotonic()
        if not re.fullmatch(r"nvidia-driver-\d+(-server)?(-open)?", package or ""):
            raise DeployError(what=f"refusing to install unexpected driver package {package!r}")
        from provisioners.remote import RemoteCommandError  # noqa: PLC0415
        pkgs = [package]
        cmd = ""
        try:
            # Fresh lists: a fixed package may have been published since the last run (a
            # half-configured driver from a failed install is then upgraded over).
            apt_get(session, "update", timeout_s=900)
            pkgs = self._packages_for(session, facts, package)
            cmd = "install -y " + " ".join(shlex.quote(p) for p in pkgs)
            apt_get(session, cmd, timeout_s=self.install_timeout_s)
        except RemoteCommandError as exc:
            raise self._install_failure(session, exc, pkgs) from None
        return OpResult("driver install", "changed", f"installed {' + '.join(pkgs)}",
                        time.monotonic() - start, {"packages": pkgs})

    def _install_failure(self, session: Any, exc: Any, pkgs: list[str]) -> DeployError:
        logs = collect_failure_logs(session)
        tail = "\n".join(exc.cause.splitlines()[-15:])
        last = logs.get("dkms make.log") or logs.get("apt term.log") or tail
        findings = _findings(self._diagnose, {**logs, "apt output": exc.cause})
        sb = "Key was rejected by service" in "\n".join(logs.values()) + exc.cause
        remedy = ("Secure Boot rejects the unsigned DKMS module: turn Secure Boot off for the "
                  "VM (PVE efidisk0 with pre-enrolled-keys=0) or enroll the DKMS key "
                  "(`sudo mokutil --import /var/lib/shim-signed/mok/MOK.der`, confirm on the "
                  "console at the next boot)") if sb else (
                  "read the DKMS/apt log above; usual causes: kernel headers missing "
                  "(`sudo apt-get install linux-headers-$(uname -r)`) or a kernel too new for "
                  "this driver branch. The VM stays up: fix the cause, then re-run "
                  "(the driver step resumes)")
        return DeployError(
            what=f"NVIDIA driver install failed ({' '.join(pkgs)})",
            cause=redact(f"{last}" + (f"\nfindings: {findings}" if findings else "")),
            remedy=remedy, command=exc.command, exit_code=exc.exit_code,
            evidence={"apt output": exc.cause, **logs,
                      **({"diagnosis": findings} if findings else {})})

    def _reboot_and_wait(self, session: Any, facts: Facts) -> OpResult:
        start = time.monotonic()
        before = session.boot_id()
        session.log(f"rebooting {session.host} to load the NVIDIA kernel module")
        self.reboot(session)
        session.wait_for_reboot(before, timeout_s=self.reboot_timeout_s)
        return OpResult("reboot", "changed", "rebooted to load the new kernel module",
                        time.monotonic() - start)

    def _check_loaded(self, session: Any) -> None:
        """After the reboot: the open module is loaded and nvidia-smi answers, else a
        diagnosed :class:`DeployError` (Secure Boot rejection gets its own)."""
        checks = self.verify(session)
        failed = [c for c in checks if not c.passed and c.name in
                  ("modinfo license", "nvidia-smi", "installed flavour")]
        if not failed:
            return
        logs = collect_failure_logs(session)
        kernel = logs.get("kernel log", "")
        events = dmesg_parser.parse(kernel)
        findings = _findings(self._diagnose, {**logs, **{c.name: c.evidence for c in checks}})
        if any(e.kind == "secure-boot-rejected" for e in events) or \
                "Key was rejected by service" in logs.get("modprobe nvidia", ""):
            raise DeployError(
                what="Secure Boot rejected the NVIDIA kernel module",
                cause="the kernel refuses the unsigned (DKMS-built) nvidia module: "
                      "'Key was rejected by service'",
                remedy="turn Secure Boot off for this VM (PVE: efidisk0 with "
                       "pre-enrolled-keys=0, bios=ovmf) or enroll the DKMS signing key with "
                       "`sudo mokutil --import /var/lib/shim-signed/mok/MOK.der` and confirm it "
                       "on the VM console at the next boot; then re-run",
                evidence={**logs, **({"diagnosis": findings} if findings else {})})
        bad = [e for e in events if not e.benign and e.kind != "module-loaded"]
        raise DeployError(
            what="the NVIDIA driver is installed but not working after the reboot",
            cause="; ".join(f"{c.name}: {c.actual}" for c in failed)
                  + ("\nkernel: " + "\n".join(e.text for e in bad[-5:]) if bad else "")
                  + (f"\nfindings: {findings}" if findings else ""),
            remedy="read the kernel log above (sudo dmesg | grep -i nvrm); check that the "
                   "open flavour is installed and the GPU is passed through, then re-run",
            evidence={**logs, **{c.name: c.evidence for c in checks}})

    # -- verify ---------------------------------------------------------------------------------

    def verify(self, session: Any) -> list[Check]:
        """The driver checks of the verify ladder (read-only, one round trip): ubuntu-drivers
        lists the GPU, installed flavour (-open, branch >= minimum), modinfo license
        ``Dual MIT/GPL``, no reboot pending, nvidia-smi answers with the catalog's name and
        memory (MiB)."""
        return driver_checks(self.facts(session), self)


def component(catalog: Any, vm: Any, **kwargs: Any) -> DriverComponent:
    """The pipeline's factory: ``component(catalog, vm, reboot=..., ...)`` -> :class:`DriverComponent`
    (``kwargs`` as its constructor; ``catalog`` is not needed today)."""
    return DriverComponent(vm, **kwargs)


def _recommended_name(values: dict) -> str | None:
    rec = next((o for o in values.get("options", []) if o.recommended), None)
    return rec.package if rec else None


def _ev(facts: Facts, *names: str) -> str:
    """Evidence text: each probe's command and its output (``(no output)`` when empty)."""
    parts = []
    for n in names:
        out = facts.raw.get(n, "").strip()
        parts.append(f"$ {PROBES.get(n, n)}\n{out or '(no output)'}")
    return "\n".join(parts)


def driver_checks(facts: Facts, comp: DriverComponent) -> list[Check]:
    """Pure: the driver :class:`Check` list from :class:`Facts` (see :meth:`DriverComponent.verify`)."""
    v = facts.values
    floor = max(comp.min_branch, gpu_needs(comp.pci_id).min_driver_branch or 0)
    checks: list[Check] = []
    nv = [o.package for o in v.get("options", []) if o.package.startswith("nvidia-")]
    listed = bool(nv)
    checks.append(Check("ubuntu-drivers", listed or not v.get("ubuntu_drivers"),
                        f"lists drivers for {comp.pci_id}",
                        ("lists " + ", ".join(nv[:6])) if listed
                        else ("ubuntu-drivers not installed (skipped)"
                              if not v.get("ubuntu_drivers") else "no NVIDIA driver listed"),
                        _ev(facts, "devices", "list")))
    cur: DriverOption | None = v.get("installed_driver")
    want_open = comp.flavour != "closed" or gpu_needs(comp.pci_id).open_modules_only
    flav_ok = cur is not None and cur.open == want_open and (cur.branch or 0) >= floor
    checks.append(Check("installed flavour", flav_ok,
                        f"{'-open' if want_open else 'closed'}, branch >= {floor}",
                        cur.package if cur else "no nvidia-driver-* installed",
                        _ev(facts, "installed")))
    want_license = OPEN_LICENSE if want_open else CLOSED_LICENSE
    checks.append(Check("modinfo license", v.get("license") == want_license, want_license,
                        v.get("license") or "no nvidia module", _ev(facts, "license")))
    checks.append(Check("reboot", not v.get("reboot_required"), "none pending",
                        ("pending: " + ", ".join(v.get("reboot_pkgs", [])[:5]) or "pending")
                        if v.get("reboot_required") else "none pending",
                        _ev(facts, "reboot_required")))
    smi = v.get("smi")
    smi_ok = smi is not None
    actual = (f"{smi.get('name')}, {smi.get('memory.total')} MiB, driver "
              f"{smi.get('driver_version')}") if smi else f"fails: {v.get('smi_failure')}"
    if smi_ok and comp.expected_name:
        smi_ok = smi.get("name") == comp.expected_name
    if smi_ok and comp.expected_mib:
        smi_ok = smi.get("memory.total") == int(comp.expected_mib)
    checks.append(Check("nvidia-smi", smi_ok,
                        f"answers: {comp.expected_name}, {comp.expected_mib} MiB", actual,
                        _ev(facts, "smi")))
    return checks


FAILURE_LOGS_SH = r"""
echo '@@ apt term.log'; tail -n 40 /var/log/apt/term.log 2>/dev/null
echo '@@ dkms make.log'; f=$(ls -t /var/lib/dkms/nvidia*/*/build/make.log 2>/dev/null | head -n1)
[ -n "$f" ] && { echo "($f)"; tail -n 40 "$f"; }
echo '@@ kernel log'; dmesg 2>/dev/null | grep -iE 'nvidia|nvrm|secure boot|lockdown|Key was rejected' | tail -n 60
echo '@@ modprobe nvidia'; modprobe -n -v nvidia 2>&1 | tail -n 5; modinfo -F signer nvidia 2>&1 | head -n1
echo '@@ mokutil'; mokutil --sb-state 2>&1 | head -n 3
echo '@@ dpkg audit'; dpkg --audit 2>&1 | head -n 20
"""


def collect_failure_logs(session: Any) -> dict[str, str]:
    """Read-only: the last log lines that explain a driver failure, one round trip:
    ``apt term.log``, ``dkms make.log`` (newest ``/var/lib/dkms/nvidia*/*/build/make.log``),
    ``kernel log`` (NVIDIA/Secure Boot lines of dmesg), ``modprobe nvidia``, ``mokutil``,
    ``dpkg audit``. Empty sections are left out."""
    try:
        r = session.run(FAILURE_LOGS_SH, sudo=True, check=False, timeout_s=120)
    except DeployError as exc:
        return {"log collection": str(exc)}
    logs: dict[str, str] = {}
    name = None
    for line in r.stdout.splitlines():
        if line.startswith("@@ "):
            name = line[3:].strip()
            logs[name] = ""
        elif name:
            logs[name] += line + "\n"
    return {k: redact(v.strip()) for k, v in logs.items() if v.strip()}


def _findings(diagnose: Callable | None, captures: dict[str, str]) -> str:
    """Text of :func:`provisioners.doctor.diagnose` findings (or the given ``diagnose``);
    ``""`` when the doctor is not available or finds nothing."""
    if diagnose is None:
        try:
            from provisioners import doctor  # noqa: PLC0415 (optional, owned by #6)
            diagnose = doctor.diagnose
        except (ImportError, AttributeError):
            return ""
    try:
        result = diagnose(captures)
    except Exception as exc:  # the doctor must never hide the original failure
        return f"(diagnosis unavailable: {type(exc).__name__})"
    if result is None:
        return ""
    items = getattr(result, "findings", result)
    if isinstance(items, (list, tuple)):
        return "; ".join(str(i) for i in items)
    return str(items)


__all__ = ["DriverComponent", "component", "choose_driver", "options_for_gpu", "facts_from_outputs",
           "driver_checks", "collect_failure_logs", "gpu_needs", "GpuNeeds", "PROBES",
           "OPEN_LICENSE", "SMI_QUERY"]
