"""The orchestration the behave steps call: one method per step, state kept between steps.

A :class:`Deployment` is made once per behave run (``environment.py``, ``before_all``) and holds
what the steps share: the loaded catalog and VM entry, the target (``lab`` | ``proxmox``), the PVE
client, ONE remote SSH session opened on first use and reused by every later step, the operation
results (for the summary table) and the evidence the last call produced (for the reports).

The other library modules are imported lazily, inside the method that needs them: a module that
is not built yet makes exactly the steps that need it fail, with :class:`NotImplementedError`
naming the missing module - never a silent pass.

Evidence: every method that learns something worth showing appends ``(name, text, mime)`` to
:attr:`Deployment.evidence`; ``environment.py`` attaches and clears it after each step. Raw
outputs useful for diagnosis go to :attr:`Deployment.captures` (name -> text), which the doctor
reads when a step fails.
"""
from __future__ import annotations

import importlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioners.errors import DeployError
from provisioners.redact import register_secret
from provisioners.results import Change, OpResult

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("lab", "proxmox")
DEFAULT_CATALOGS = {"lab": REPO_ROOT / "lab" / "lab-catalog.yml",
                    "proxmox": REPO_ROOT / "infrastructure-catalog.yml"}
DEFAULT_VM = "vm-llm-aimachine"
#: the lab fakepve's root@pam password unless LAB_PVE_PASSWORD says otherwise (lab/server.py)
LAB_PVE_PASSWORD = "lab-secret"
#: the vLLM API key of the lab guest unless VLLM_API_KEY is set: a fixed, public lab value, so
#: that a second lab run finds the same key in the unit's environment file (no change)
LAB_VLLM_API_KEY = "lab-vllm-api-key"
#: set (to the holder's pid) by a process that holds the lab's guest-session lock for the
#: processes it starts (tests/lab/conftest.py): a behave run started by a lab test uses the guest
#: of that test instead of waiting for the lock its parent holds
GUEST_LOCK_HELD_ENV = "LAB_GUEST_SESSION_HELD"
#: faults a private lab Proxmox host can be prepared with (see Deployment.use_lab_fault_host)
LAB_FAULTS = ("vfio-busy", "raw-address-with-token", "no-gpu", "unmanaged-vm-140")
#: units that a catalog field's name must carry (see the header of infrastructure-catalog.yml)
UNIT_SUFFIX = {"MiB": "_mib", "GiB": "_gib", "s": "_s", "count": ""}
_PCI_ADDRESS = re.compile(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def require(module: str, issue: str) -> Any:
    """Import ``module`` or raise :class:`NotImplementedError` saying which piece is missing.

    Only the absence of ``module`` itself is translated; an ImportError *inside* it (a bug, a
    missing dependency) propagates unchanged so it is not mistaken for "not built yet".
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):
            raise NotImplementedError(f"{module} is not built yet ({issue}); this step cannot run") from err
        raise


def setting(obj: Any, dotted: str) -> Any:
    """Value at ``dotted`` (``"gpu.expected.pci_id"``) in a pydantic model / object / dict tree.
    Raises ``KeyError`` naming the first missing part."""
    cur = obj
    for part in dotted.split("."):
        if isinstance(cur, dict):
            if part not in cur:
                raise KeyError(f"{dotted}: no {part!r}")
            cur = cur[part]
        elif hasattr(cur, part):
            cur = getattr(cur, part)
        else:
            raise KeyError(f"{dotted}: no {part!r}")
    return cur


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(getattr(value, "value", value))


@dataclass
class Record:
    """One operation result as it goes into the summary table: the scenario it ran in,
    the component (``vm``, ``driver``...), and the :class:`OpResult`."""

    scenario: str
    component: str
    result: OpResult


@dataclass
class Deployment:
    """State of one deployer run (see module docstring).

    ``target``: ``lab`` or ``proxmox``; ``catalog_path``: the catalog file; ``vm_name``: the VM
    entry to act on (name or VMID); ``insecure``: skip TLS verification of the PVE API (prints a
    warning in :mod:`provisioners.proxmox`); ``progress``: a :class:`provisioners.progress.Progress`
    or None; ``gpu_profile``: the lab GPU profile to use (None = the lab's current one);
    ``hold_guest_lock``: on target ``lab``, hold the lab's guest-session lock from the first use
    of the lab until :meth:`stop_lab` (a behave run, so that lab tests and other runs wait instead
    of sharing VM 140; lab tests hold it themselves, tests/lab/conftest.py), unless a parent
    process holds it for us (env :data:`GUEST_LOCK_HELD_ENV`).
    """

    target: str = "lab"
    catalog_path: Path | None = None
    vm_name: str = DEFAULT_VM
    insecure: bool = False
    gpu_profile: str | None = None
    progress: Any = None
    catalog: Any = None
    vm: Any = None
    client: Any = None
    session: Any = None
    records: list[Record] = field(default_factory=list)
    evidence: list[tuple[str, str, str]] = field(default_factory=list)
    captures: dict[str, str] = field(default_factory=dict)
    scenario: str = ""
    last_plan: list[Change] = field(default_factory=list)
    last_error: DeployError | None = None
    last_checks: list[Any] | None = None
    files_checked: bool = False
    lab_started: bool = False
    lab_up: bool = False
    hold_guest_lock: bool = False
    guest_lock: Any = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise DeployError(what=f"unknown target {self.target!r}",
                              cause=f"-D target= must be one of {', '.join(TARGETS)}",
                              remedy="run behave with -D target=lab (the embedded lab) or -D target=proxmox")
        if self.catalog_path is None:
            self.catalog_path = DEFAULT_CATALOGS[self.target]
        self.catalog_path = Path(self.catalog_path)

    # -- bookkeeping ------------------------------------------------------------------------
    def begin_scenario(self, name: str) -> None:
        """Start a scenario: results are recorded under ``name``; evidence is shown again and
        the captures the doctor reads start empty (an earlier scenario's failure is not this one's)."""
        self.scenario = name
        self._shown: set[tuple[str, str]] = set()
        self.captures = {}
        self.last_error = None
        self.last_checks = None

    def show(self, name: str, text: str, mime: str = "text/plain") -> None:
        """Queue evidence for the report of the current step; the same (name, text) is attached
        once per scenario (several Then-steps read the same PVE config)."""
        shown = self.__dict__.setdefault("_shown", set())
        if (name, text) in shown:
            return
        shown.add((name, text))
        self.evidence.append((name, text, mime))

    def take_evidence(self) -> list[tuple[str, str, str]]:
        """Return and clear the queued evidence."""
        out, self.evidence = self.evidence, []
        return out

    def busy(self, label: str):
        """Context manager: heartbeat lines with elapsed time while a long operation runs
        (PVE task waits, package installs); a no-op without a progress reporter."""
        import contextlib

        return self.progress.heartbeat(label) if self.progress is not None else contextlib.nullcontext()

    def record(self, component: str, results: list[OpResult]) -> list[OpResult]:
        """Remember operation results for the summary table; returns them unchanged."""
        for r in results:
            self.records.append(Record(self.scenario, component, r))
        return results

    def results_of(self, scenario: str | None = None) -> list[Record]:
        """Records of one scenario (default: all)."""
        return [r for r in self.records if scenario is None or r.scenario == scenario]

    def failed_records(self, scenario: str | None = None) -> list[str]:
        """``component: result`` lines of failed operations (of one scenario; default all)."""
        return [f"{r.component}: {r.result}" for r in self.results_of(scenario) if r.result.status == "failed"]

    def summary_text(self, scenario: str | None = None) -> str:
        """Per component: changed/ok/failed counts and seconds, as text (queued as evidence).
        Empty when nothing ran."""
        rows: dict[str, list[float]] = {}
        for r in self.results_of(scenario):
            row = rows.setdefault(r.component, [0, 0, 0, 0.0])
            row[("changed", "ok", "failed").index(r.result.status)] += 1
            row[3] += r.result.duration_s
        text = "\n".join(f"{name}: {c} changed, {o} ok, {f} failed, {d:.1f}s"
                         for name, (c, o, f, d) in rows.items())
        if text:
            self.show("deployment summary", text)
        return text

    @property
    def vmid(self) -> int:
        """The catalog VM's VMID (loads the catalog if needed)."""
        self._need_catalog()
        return int(_as_text(setting(self.vm, "vmid")))

    # -- catalog ----------------------------------------------------------------------------
    def load_and_validate(self, check_files: bool | None = None) -> Any:
        """Load and validate the catalog and select the VM entry.

        ``check_files``: also require the referenced files (SSH keys, CA) to be readable. Default:
        yes on target ``proxmox``; on ``lab`` only once the lab has made them (``python -m lab up``
        writes ``.lab/ssh`` and ``.lab/pve/ca.pem``) - every step that talks to a host reloads the
        catalog with files checked after starting the lab.
        Returns the ``Catalog``; sets :attr:`catalog` and :attr:`vm`. Raises
        ``provisioners.catalog.CatalogError`` (a DeployError listing every problem with its YAML
        line) or DeployError when the VM entry is absent.
        """
        catalog_mod = require("provisioners.catalog", "issue #2, catalog")
        if self.target == "lab":
            # The lab's key pair is part of the lab catalog (cloud-init sshkeys); make it on first
            # use so a fresh clone can plan before the lab has ever started.
            require("lab.server", "issue #3, lab").ensure_ssh_key(require("lab.state", "issue #3, lab").paths())
        if check_files is None:
            check_files = self.target == "proxmox" or self.lab_up
        self.catalog = catalog_mod.load_catalog(self._catalog_file_to_load(), check_files=check_files)
        self.vm = self.catalog.vm(self.vm_name)
        self.files_checked = check_files
        note = "" if check_files else "\n(referenced files not checked yet: the lab creates them when it starts)"
        self.show("catalog file", f"{self.catalog_path}{note}\n\n{self.catalog_path.read_text(encoding='utf-8')}")
        return self.catalog

    def _catalog_file_to_load(self) -> Path:
        """The catalog file to parse. On target ``lab`` the catalog names the default lab's
        loopback ports (17xxx, ``LAB_PORT_BASE`` 17000) and state directory (``../.lab/``); a lab
        started with another ``LAB_PORT_BASE`` or ``LAB_STATE_DIR`` (an isolated lab beside the
        shared one) gets a copy with its own ports and paths, written to
        ``<state dir>/catalog-<name>``. Ports are the lab's offsets (lab/state.py ``Ports``)."""
        if self.target != "lab":
            return self.catalog_path
        lab_state = require("lab.state", "issue #3, lab")
        root, base = lab_state.paths().root, lab_state.port_base()
        if root == REPO_ROOT / ".lab" and base == lab_state.DEFAULT_PORT_BASE:
            return self.catalog_path
        text = self.catalog_path.read_text(encoding="utf-8")
        text = re.sub(r"\b17(006|022|080|800|434)\b", lambda m: str(base + int(m.group(1))), text)
        text = text.replace("../.lab/", f"{root}/")
        root.mkdir(parents=True, exist_ok=True)
        derived = root / f"catalog-{self.catalog_path.name}"
        derived.write_text(text, encoding="utf-8")
        return derived

    def _need_catalog(self) -> None:
        if self.vm is None:
            self.load_and_validate()

    def vm_setting_mismatches(self, expected: dict[str, str]) -> list[str]:
        """Compare VM settings (dotted path -> expected text) with the catalog; returns one line per
        difference or missing field (empty = all match)."""
        self._need_catalog()
        problems = []
        for path, want in expected.items():
            try:
                have = _as_text(setting(self.vm, path))
            except KeyError as err:
                problems.append(f"{path}: missing in the catalog ({err})")
                continue
            if have != want:
                problems.append(f"{path}: catalog has {have!r}, expected {want!r}")
        return problems

    def unit_problems(self, units: dict[str, str]) -> list[str]:
        """Check that each field (dotted path -> unit ``MiB``/``GiB``/``s``/``count``) is named
        with its unit suffix and holds a positive number. Returns problems (empty = fine)."""
        self._need_catalog()
        problems, shown = [], []
        for path, unit in units.items():
            suffix = UNIT_SUFFIX.get(unit)
            if suffix is None:
                problems.append(f"{path}: unknown unit {unit!r} (use one of {', '.join(UNIT_SUFFIX)})")
                continue
            if suffix and not path.endswith(suffix):
                problems.append(f"{path}: a value in {unit} must be named *{suffix}")
            try:
                value = setting(self.vm, path)
            except KeyError as err:
                problems.append(f"{path}: missing in the catalog ({err})")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                problems.append(f"{path}: expected a positive number of {unit}, got {value!r}")
            shown.append(f"{path} = {value} {unit}")
        self.show("VM resources", "\n".join(shown))
        return problems

    def gpu_reference_problems(self) -> list[str]:
        """The GPU must be named by a resource-mapping id (API-token use) and by a raw PCI address
        (root@pam use), e.g. ``0000:01:00``. Returns problems (empty = fine)."""
        self._need_catalog()
        problems = []
        mapping = _as_text(setting(self.vm, "gpu.mapping")) if _has(self.vm, "gpu.mapping") else ""
        address = _as_text(setting(self.vm, "gpu.address")) if _has(self.vm, "gpu.address") else ""
        if not mapping:
            problems.append("gpu.mapping: no PCI resource mapping name (needed with an API token)")
        if not _PCI_ADDRESS.match(address):
            problems.append(f"gpu.address: {address!r} is not a PCI address like 0000:01:00")
        self.show("GPU reference", f"mapping={mapping}\naddress={address}")
        return problems

    def image_reference_problems(self) -> list[str]:
        """The VM's image must give the cloud image volume ID, its download URL and sha256, and
        the installer ISO path. Returns problems (empty = fine)."""
        self._need_catalog()
        image_name = _as_text(setting(self.vm, "image"))
        images = setting(self.catalog, "images")
        image = images.get(image_name) if isinstance(images, dict) else getattr(images, image_name, None)
        if image is None:
            return [f"image: {image_name!r} is not defined under images:"]
        problems, shown = [], [f"image {image_name}"]
        for path in ("cloud_image.volid", "cloud_image.url", "cloud_image.sha256", "iso"):
            value = _as_text(setting(image, path)) if _has(image, path) else ""
            shown.append(f"{path} = {value or '(none)'}")
            if not value and not (path == "iso" and self.target == "lab"):
                problems.append(f"images.{image_name}.{path}: missing")
        if self.target == "lab":
            shown.append("(lab: a Debian stand-in image built by the lab; no installer ISO)")
        sha = _as_text(setting(image, "cloud_image.sha256")) if _has(image, "cloud_image.sha256") else ""
        if sha and not _SHA256.match(sha):
            problems.append(f"images.{image_name}.cloud_image.sha256: not 64 lower-case hex digits")
        self.show("image reference", "\n".join(shown))
        return problems

    def lint_problems(self) -> list[str]:
        """yamllint the catalog file with the project's ``.yamllint`` (yamllint's ``default``
        config when the project has none). Returns ``path:line:col: [level] message (rule)``
        lines; empty = clean."""
        from yamllint import linter
        from yamllint.config import YamlLintConfig

        project = REPO_ROOT / ".yamllint"
        conf = YamlLintConfig(file=str(project)) if project.is_file() else YamlLintConfig("extends: default")
        text = self.catalog_path.read_text(encoding="utf-8")
        problems = [f"{self.catalog_path}:{p.line}:{p.column}: [{p.level}] {p.desc} ({p.rule})"
                    for p in linter.run(text, conf, str(self.catalog_path))]
        self.show("yamllint", "\n".join(problems) or "no problems")
        return problems

    def catalog_plan(self) -> str:
        """What a deployment would build from the catalog, without contacting any host: the VM,
        its PVE settings as the apply step will send them (from ``provisioners.vm`` when it
        offers ``desired_config``), the guest stack. Returns the text (also queued as evidence)."""
        self._need_catalog()
        vm = self.vm
        lines = [f"catalog: {self.catalog_path}", f"target: {self.target}",
                 f"VM {_as_text(setting(vm, 'vmid'))} {_as_text(setting(vm, 'name'))}"]
        for path, unit in (("cores", ""), ("memory_mib", " MiB"), ("disk.size_gib", " GiB"),
                           ("disk.storage", ""), ("image", ""), ("ip", ""), ("gpu.mapping", ""),
                           ("gpu.address", ""), ("gpu.expected.pci_id", ""), ("gpu.expected.name", ""),
                           ("gpu.expected.memory_mib", " MiB")):
            if _has(vm, path):
                lines.append(f"  {path}: {_as_text(setting(vm, path))}{unit}")
        from provisioners.vm import desired_config

        lines.append("PVE configuration to apply (API token: GPU by resource mapping):")
        for key, value in sorted(desired_config(self.catalog, vm, raw_pci=False).items()):
            lines.append(f"  {key}: {value}")
        if _has(vm, "stack"):
            lines.append("guest stack:")
            for comp in ("driver", "cuda", "vllm", "ollama"):
                if _has(vm, f"stack.{comp}"):
                    part = setting(vm, f"stack.{comp}")
                    data = part.model_dump() if hasattr(part, "model_dump") else dict(part)
                    shown = ", ".join(f"{k}={v}" for k, v in data.items() if k not in ("sha256",))
                    lines.append(f"  {comp}: {shown}")
        text = "\n".join(lines)
        self.show("catalog plan", text)
        return text

    # -- Proxmox ----------------------------------------------------------------------------
    def connect(self) -> Any:
        """Open (once) the PVE API client for the catalog's endpoint (``provisioners.proxmox``)."""
        self._need_catalog()
        if self.client is None:
            self.ensure_lab()
            if not self.files_checked:
                self.load_and_validate()
            proxmox = require("provisioners.proxmox", "issue #2, Proxmox client")
            credentials = None
            if self.target == "lab":
                # The lab's fakepve accepts root@pam with the lab password; a real host's
                # credentials come from PROXMOX_* (provisioners.proxmox.credentials_from_env).
                password = os.environ.get("LAB_PVE_PASSWORD") or LAB_PVE_PASSWORD
                register_secret(password)
                credentials = proxmox.Credentials(user="root@pam", password=password)
            self.client = proxmox.connect(self.catalog, insecure=self.insecure, credentials=credentials)
        return self.client

    def preflight(self) -> list[Any]:
        """Run the pre-flight checks (``provisioners.vm.preflight``); returns the findings that
        block a deployment (all findings are queued as evidence)."""
        vm_mod = require("provisioners.vm", "issue #2, VM lifecycle")
        findings = vm_mod.preflight(self.connect(), self.catalog, self.vm)
        self.show("pre-flight", "\n".join(str(f) for f in findings) or "no findings")
        return [f for f in findings if _is_blocking(f)]

    def plan(self) -> list[Change]:
        """Desired (catalog) vs live (PVE) for the VM; returns the changes (empty = nothing to do)."""
        vm_mod = require("provisioners.vm", "issue #2, VM lifecycle")
        self.last_plan = list(vm_mod.plan_vm(self.connect(), self.catalog, self.vm))
        self.show("VM plan", "\n".join(str(c) for c in self.last_plan) or "no changes")
        return self.last_plan

    def ensure_vm(self) -> list[OpResult]:
        """Create/converge the VM (``provisioners.vm.apply_vm``: create, resize, cloud-init, GPU,
        start; rollback of what this run created on failure). Returns the operation results.
        A DeployError is kept in :attr:`last_error` (for Then-steps about failures) and re-raised."""
        vm_mod = require("provisioners.vm", "issue #2, VM lifecycle")
        try:
            client = self.connect()
            with self.busy(f"VM {self.vmid}: PVE tasks"):
                results = list(vm_mod.apply_vm(client, self.catalog, self.vm))
        except DeployError as err:
            self.last_error = err
            self.captures.update(err.evidence or {})
            self.record("vm", [OpResult("apply VM", "failed", reason=err.what)])
            raise
        self.show("VM operations", "\n".join(str(r) for r in results) or "nothing to do")
        return self.record("vm", results)

    def deploy_expecting_failure(self) -> DeployError:
        """Run :meth:`ensure_vm` where the scenario expects it to fail; returns the DeployError.
        Raises AssertionError when the deployment succeeded."""
        try:
            self.ensure_vm()
        except DeployError as err:
            self.show("deployment error", str(err))
            return err
        raise AssertionError("the deployment succeeded, but this scenario expects it to fail")

    def vm_config(self) -> dict[str, Any]:
        """The VM's live PVE configuration (``GET /nodes/{node}/qemu/{vmid}/config`` through
        ``provisioners.vm.live.read_live``). Raises AssertionError when the VM does not exist."""
        live_mod = require("provisioners.vm.live", "issue #2, VM lifecycle")
        live = live_mod.read_live(self.connect(), self.vmid)
        if live is None:
            raise AssertionError(f"VM {self.vmid} does not exist on the Proxmox host")
        config = dict(live.config)
        self.show("PVE config", "\n".join(f"{k}: {v}" for k, v in sorted(config.items())))
        return config

    def vm_state(self) -> str:
        """``running`` / ``stopped`` / ``absent`` (``provisioners.vm.vm_status``)."""
        vm_mod = require("provisioners.vm", "issue #2, VM lifecycle")
        status = dict(vm_mod.vm_status(self.connect(), self.vm) or {})
        self.show("VM status", "\n".join(f"{k}: {v}" for k, v in sorted(status.items())))
        return str(status.get("status", "unknown"))

    def config_problems(self, expected: dict[str, str]) -> list[str]:
        """Compare live PVE config keys with expected values. Two symbolic values are resolved
        from the catalog: ``the catalog's GPU, pcie=1`` (``mapping=<id>`` or ``host=<address>``
        plus ``pcie=1``). Returns problems (empty = all match)."""
        config = self.vm_config()
        problems = []
        for key, want in expected.items():
            have = _as_text(config.get(key))
            if want.startswith("the catalog's GPU"):
                gpu_ok = (f"mapping={_as_text(setting(self.vm, 'gpu.mapping'))}" in have
                          or f"host={_as_text(setting(self.vm, 'gpu.address'))}" in have)
                if not gpu_ok or "pcie=1" not in have:
                    problems.append(f"{key}: {have!r} does not attach the catalog's GPU with pcie=1")
            elif have != want and not have.startswith(want + ","):
                problems.append(f"{key}: PVE has {have!r}, expected {want!r}")
        return problems

    def resource_problems(self) -> list[str]:
        """Live cores/memory/disk vs the catalog (PVE ``cores``, ``memory`` in MiB, ``scsi0``
        ``size=<n>G``). A larger live disk is fine (disks are never shrunk)."""
        config = self.vm_config()
        problems = []
        if _as_text(config.get("cores")) != _as_text(setting(self.vm, "cores")):
            problems.append(f"cores: PVE has {config.get('cores')!r}, catalog {setting(self.vm, 'cores')!r}")
        if _as_text(config.get("memory")) != _as_text(setting(self.vm, "memory_mib")):
            problems.append(f"memory: PVE has {config.get('memory')!r} MiB, catalog {setting(self.vm, 'memory_mib')!r} MiB")
        size = re.search(r"size=(\d+)G", _as_text(config.get("scsi0")))
        want = int(setting(self.vm, "disk.size_gib"))
        if not size or int(size.group(1)) < want:
            problems.append(f"scsi0: {config.get('scsi0')!r} is not a disk of at least {want} GiB")
        return problems

    def cloud_init_problems(self) -> list[str]:
        """``ciuser``, ``sshkeys`` (URL-encoded key present) and ``ipconfig0`` match the catalog."""
        from urllib.parse import unquote

        config = self.vm_config()
        problems = []
        user = _as_text(setting(self.vm, "cloud_init.user"))
        if _as_text(config.get("ciuser")) != user:
            problems.append(f"ciuser: PVE has {config.get('ciuser')!r}, catalog {user!r}")
        key_file = Path(_as_text(setting(self.vm, "cloud_init.ssh_public_key_file"))).expanduser()
        if not key_file.is_absolute():
            key_file = self.catalog_path.parent / key_file
        key = key_file.read_text(encoding="utf-8").strip() if key_file.is_file() else ""
        if not key or key.split()[1] not in unquote(_as_text(config.get("sshkeys"))):
            problems.append(f"sshkeys: the public key of {key_file} is not in the VM's cloud-init keys")
        ip = _as_text(setting(self.vm, "ip"))
        if f"ip={ip}" not in _as_text(config.get("ipconfig0")):
            problems.append(f"ipconfig0: {config.get('ipconfig0')!r} does not set ip={ip}")
        return problems

    def managed_marker_present(self) -> bool:
        """Whether the VM carries the deployer's managed marker (``provisioners.vm.is_managed``)."""
        vm_mod = require("provisioners.vm", "issue #2, VM lifecycle")
        return bool(vm_mod.has_marker(self.vm_config()))

    def destroy(self, confirm: bool) -> list[OpResult]:
        """Destroy the VM when it carries our marker (``provisioners.vm.destroy_vm``)."""
        vm_mod = require("provisioners.vm", "issue #2, VM lifecycle")
        result = vm_mod.destroy_vm(self.connect(), self.catalog, self.vm, confirm)
        return self.record("vm", result if isinstance(result, list) else [result])

    # -- lab ----------------------------------------------------------------------------------
    def ensure_lab(self) -> bool:
        """On target ``lab``, make sure the lab runs (``python -m lab status``, else
        ``python -m lab up [--profile P]``). Returns True when this run started it - then
        :meth:`stop_lab` stops it again; a lab someone else started is left running."""
        if self.target != "lab":
            return False
        if self.hold_guest_lock and self.guest_lock is None and not os.environ.get(GUEST_LOCK_HELD_ENV):
            lab_state = require("lab.state", "issue #3, lab")
            with self.busy("waiting for the lab guest (a lab test or another run holds it)"):
                self.guest_lock = lab_state.LabLock(lab_state.paths().guest_session_lock).acquire(
                    wait=1800, what="a lab test or another deployer run holds the lab guest VM")
        if self.lab_up or _lab_cli("status").returncode == 0:
            self.lab_up = True
            return self.lab_started
        args = ["up"] + (["--profile", self.gpu_profile] if self.gpu_profile else [])
        if self.progress is not None:
            with self.progress.heartbeat("starting the lab"):
                proc = _lab_cli(*args)
        else:
            proc = _lab_cli(*args)
        if proc.returncode != 0:
            raise DeployError(what="the lab did not start", cause=(proc.stdout + proc.stderr)[-2000:],
                              remedy="run `python -m lab up` by hand and read .lab/lab.log",
                              command="python -m lab " + " ".join(args), exit_code=proc.returncode)
        self.lab_started = self.lab_up = True
        return True

    def stop_lab(self) -> None:
        """Stop the lab if (and only if) this run started it; release the guest-session lock."""
        if self.lab_started:
            _lab_cli("down")
            self.lab_started = self.lab_up = False
        if self.guest_lock is not None:
            self.guest_lock.release()
            self.guest_lock = None

    def set_lab_profile(self, name: str) -> str:
        """Select the lab's GPU profile (``python -m lab profile NAME``; the lab serves that
        profile's packages and hardware facts from then on). Returns the CLI's answer."""
        if self.target != "lab":
            raise DeployError(what="GPU profiles exist only in the lab", cause="target is proxmox",
                              remedy="run this scenario with -D target=lab, or exclude @lab")
        self.ensure_lab()
        proc = _lab_cli("profile", name)
        if proc.returncode != 0:
            raise DeployError(what=f"the lab could not switch to GPU profile {name!r}",
                              cause=(proc.stdout + proc.stderr)[-2000:], command=f"python -m lab profile {name}",
                              exit_code=proc.returncode, remedy="`python -m lab profile` lists the profiles")
        self.show("lab GPU profile", proc.stdout)
        return proc.stdout

    # -- lab fault hosts (failure scenarios) ---------------------------------------------------
    def use_lab_fault_host(self, fault: str) -> dict[str, Any]:
        """Point this scenario at a private, in-process lab Proxmox host (``lab.gpupve.GpuFakePve``
        on a free loopback port, verified TLS) prepared with one fault, so that failure scenarios
        never disturb the shared lab or its VM 140. :meth:`end_scenario` switches back.

        Faults (:data:`LAB_FAULTS`): ``vfio-busy`` (start fails: QEMU's ``Device or resource busy``
        line, ``start failed: QEMU exited with code 1``), ``raw-address-with-token`` (an API token
        and a catalog without mapping: PVE refuses ``host=``), ``no-gpu`` (the GPU is absent from
        ``/nodes/{node}/hardware/pci``), ``unmanaged-vm-140`` (someone else's VM holds the VMID).
        Returns the unmanaged VM's ``{"config", "status"}`` for that fault, else ``{}``.
        Only on target ``lab``.
        """
        if self.target != "lab":
            raise DeployError(what="fault injection needs the lab", cause="target is proxmox",
                              remedy="run this scenario with -D target=lab, or exclude @lab")
        if fault not in LAB_FAULTS:
            raise DeployError(what=f"unknown lab fault {fault!r}", remedy=f"use one of {', '.join(LAB_FAULTS)}")
        self._need_catalog()
        gpupve = require("lab.gpupve", "issue #3, lab GpuFakePve")
        proxmox = require("provisioners.proxmox", "issue #2, Proxmox client")
        import secrets as _secrets
        import tempfile

        from fakepve.certs import make_cert

        self.end_scenario()
        workdir = tempfile.mkdtemp(prefix="deployer-fault-")
        cert, key = make_cert(workdir, hosts=("127.0.0.1",))[:2]
        token_secret = _secrets.token_hex(16)
        register_secret(token_secret)
        pve = gpupve.GpuFakePve(profile="no-gpu" if fault == "no-gpu" else "rtx5060ti", user="root@pam",
                                password=_secrets.token_hex(8), host="127.0.0.1", port=0)
        pve.time_scale = 0
        pve.apitokens["deployer@pve!behave"] = token_secret
        served = gpupve.ServedPve(pve, cert, key)
        vm = self.vm
        pub = Path(vm.cloud_init.ssh_public_key_file)
        if not pub.is_file():  # the lab's key pair appears only once the lab has run
            pub = Path(workdir) / "id_ed25519.pub"
            pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC4v5qS2o0QHnI0Jk9M9+7cA8w0s1d2e3f4g5h6i7j8k fault@lab\n")
            vm = vm.model_copy(update={"cloud_init": vm.cloud_init.model_copy(update={"ssh_public_key_file": pub})})
        if fault == "raw-address-with-token":
            vm = vm.model_copy(update={"gpu": vm.gpu.model_copy(update={"mapping": None})})
        volid = self.catalog.image_for(vm).cloud_image.volid
        storage, _, name = volid.partition(":")
        pve.store_file(storage, name.split("/", 1)[1], 512 * 1024 ** 2, content="import")
        snapshot: dict[str, Any] = {}
        if fault == "unmanaged-vm-140":
            other = pve.add_vm(vm.vmid, "someone-elses", node=pve.node_name, status="running",
                               config={"memory": "4096", "scsi0": "local-lvm:vm-140-disk-0,size=32G"})
            snapshot = {"config": dict(other.config), "status": other.status}
        if fault == "vfio-busy":
            pve.vfio_busy = True
        self._saved = (self.client, self.vm)
        self._fault = served
        self.vm = vm
        self.client = proxmox.connect(self.catalog, endpoint=pve.url, ca_file=cert,
                                      credentials=proxmox.Credentials("deployer@pve", token_name="behave",
                                                                      token_secret=token_secret))
        self.show("lab fault host", f"{pve.url} (private GpuFakePve, profile {pve.profile}) with fault {fault}")
        return snapshot

    def lab_vm_snapshot(self, vmid: int) -> dict[str, Any]:
        """``{"config", "status"}`` of VM ``vmid`` on the scenario's lab fault host (read directly
        from the fake, so the check itself cannot change anything)."""
        if getattr(self, "_fault", None) is None:
            raise AssertionError("no lab fault host in this scenario")
        vm = self._fault.pve.vm(vmid)
        snap = {} if vm is None else {"config": dict(vm.config), "status": vm.status}
        self.show(f"VM {vmid} on the fault host", "\n".join(f"{k}: {v}" for k, v in snap.items()))
        return snap

    def end_scenario(self) -> None:
        """Stop the scenario's lab fault host, if any, and switch back to the target's host."""
        served = getattr(self, "_fault", None)
        if served is None:
            return
        self.client, self.vm = self._saved
        self._fault = None
        served.stop()

    # -- guest ------------------------------------------------------------------------------
    def open_session(self, wait_s: float = 600.0) -> Any:
        """The run's SSH session to the guest (``provisioners.remote.RemoteSession``), opened on
        first use and reused. Host/port/user/key come from the catalog's ``ssh`` and
        ``cloud_init`` entries; its log goes to the progress heartbeat."""
        if self.session is not None:
            # RemoteSession reconnects by itself on a dropped connection; one session per run.
            return self.session
        self._need_catalog()
        self.ensure_lab()
        remote = require("provisioners.remote", "issue #4, SSH session")
        host = (_as_text(setting(self.vm, "ssh.host")) if _has(self.vm, "ssh.host") else "") \
            or _as_text(setting(self.vm, "ip")).split("/")[0]
        port = int(_as_text(setting(self.vm, "ssh.port")) or 22) if _has(self.vm, "ssh.port") else 22
        key = Path(_as_text(setting(self.vm, "ssh.private_key_file"))).expanduser()
        if not key.is_absolute():
            key = self.catalog_path.parent / key
        jump = _as_text(setting(self.vm, "ssh.jump_host")) if _has(self.vm, "ssh.jump_host") else ""
        log = self.progress.on_output if self.progress is not None else None
        node = _as_text(setting(self.catalog, "proxmox.node")) if _has(self.catalog, "proxmox.node") else "pve"
        identity = f"{node}/{self.vmid}"
        if self.target == "lab":
            # labs side by side (LAB_PORT_BASE) each have a VM 140 on node pve1: pin per lab
            identity = f"{host}:{port}/{identity}"
        session = remote.RemoteSession(
            host, port, _as_text(setting(self.vm, "cloud_init.user")), key, jump_host=jump or None,
            vm_identity=identity, vm_generation=self._vm_generation(), log=log)
        with self.busy(f"waiting for SSH on {host}:{port}"):
            session.connect(wait_s=wait_s)
        self.session = session
        return session

    def _vm_generation(self) -> str | None:
        """The VM's creation marker (``provisioners.remote.vm_generation``: PVE ``meta ctime``,
        else ``vmgenid``), so that SSH host-key pinning re-pins a re-created VM instead of
        refusing it. None when the PVE side cannot be read (a guest reached without API access)."""
        remote = require("provisioners.remote", "issue #4, SSH session")
        try:
            live_mod = require("provisioners.vm.live", "issue #2, VM lifecycle")
            live = live_mod.read_live(self.connect(), self.vmid)
        except (DeployError, NotImplementedError):
            return None
        return None if live is None else remote.vm_generation(live.config)

    def reach(self) -> str:
        """Open the SSH session and return the VM's identity: the guest's ``/etc/machine-id``
        (a re-created VM boots a new instance, which gets a new one) and the VM's PVE creation
        marker (``meta ctime``, see :meth:`_vm_generation`), as one line of text."""
        machine_id = self.open_session().run("cat /etc/machine-id", check=True).stdout.strip()
        identity = f"/etc/machine-id {machine_id}, PVE creation {self._vm_generation() or 'unknown'}"
        self.show("guest identity", identity)
        return identity

    def recreate_vm(self) -> list[OpResult]:
        """Lab only (a deliberate, destructive reset): destroy the catalog's VM when it exists
        (only a VM carrying the managed marker - ``provisioners.vm.destroy_vm`` refuses any
        other), deploy it afresh from the catalog and bootstrap the guest. Scenarios that need a
        guest without any driver start here. Returns the operation results (also recorded).
        Raises DeployError on target ``proxmox`` or when a step fails."""
        if self.target != "lab":
            raise DeployError(what="re-creating the VM is a lab-only step", cause="target is proxmox",
                              remedy="run this scenario with -D target=lab, or exclude @destructive")
        self.close()  # the session belongs to the VM about to go
        with self.busy(f"VM {self.vmid}: destroying"):
            results = self.destroy(confirm=True)
        results += self.ensure_vm()
        return results + self.bootstrap_guest()

    def driver_failure_problems(self, err: DeployError) -> list[str]:
        """What a failed driver install must tell the operator, checked on its DeployError: the
        failed command (an apt-get install of an ``nvidia-driver-*`` package), its non-zero exit
        code, the last lines of the failing log (the last line of the DKMS ``make.log`` or of the
        apt output, quoted in the cause) and a remedy that says the step can be re-run.
        Returns problems (empty = the error explains itself)."""
        problems = []
        command = err.command or ""
        if "install" not in command or "nvidia-driver-" not in command:
            problems.append(f"command: {command!r} is not the driver install")
        if not err.exit_code:
            problems.append(f"exit code: {err.exit_code!r}, expected the install's non-zero status")
        evidence = err.evidence or {}
        log = evidence.get("dkms make.log") or evidence.get("apt output") or ""
        last = next((line.strip() for line in reversed(log.splitlines()) if line.strip()), "")
        if not last or last not in (err.cause or ""):
            problems.append(f"log lines: the cause does not quote the failing log's last line {last!r}")
        if "re-run" not in (err.remedy or ""):
            problems.append(f"remedy: {err.remedy!r} does not say what to fix and to re-run")
        self.show("driver error", str(err))
        return problems

    def error_explanation_problems(self, err: DeployError, what: str) -> list[str]:
        """An operator error about the GPU must name the PCI device (the catalog's address or
        vendor:device id) and mention what to check: every word of each ``and``-separated
        phrase of ``what`` (plural ``s`` ignored) must appear in the error. Returns problems."""
        self._need_catalog()
        text = str(err).lower()
        problems = []
        ids = [_as_text(setting(self.vm, p)).lower() for p in ("gpu.address", "gpu.expected.pci_id", "gpu.mapping")
               if _has(self.vm, p)]
        if not any(i and i in text for i in ids):
            problems.append(f"the error names none of {ids}:\n{err}")
        for phrase in re.split(r"\band\b", what.lower()):
            words = [w.rstrip("s") for w in re.findall(r"[a-z0-9]+", phrase) if w not in ("the", "a", "an", "on", "its", "is", "to", "of")]
            missing = [w for w in words if w not in text]
            if missing:
                problems.append(f"the error does not say to check {phrase.strip()!r} (missing: {', '.join(missing)})")
        return problems

    def secure_boot_error_problems(self, err: DeployError) -> list[str]:
        """A driver module rejected by Secure Boot gets its own diagnosis, not the generic one:
        the error says Secure Boot rejected the module, its remedy says to turn Secure Boot off or
        to enroll the DKMS key with ``mokutil``, and the doctor's findings
        (``provisioners.doctor``, in the ``diagnosis`` evidence) name Secure Boot too.
        Returns problems (empty = diagnosed as such)."""
        problems = []
        if "secure boot" not in err.what.lower():
            problems.append(f"the error {err.what!r} does not say Secure Boot rejected the module")
        remedy = (err.remedy or "").lower()
        if "secure boot off" not in remedy or "mokutil" not in remedy:
            problems.append(f"remedy: {err.remedy!r} names neither turning Secure Boot off nor enrolling the key with mokutil")
        diagnosis = (err.evidence or {}).get("diagnosis", "")
        if "secure boot" not in diagnosis.lower().replace("-", " "):
            problems.append(f"the doctor's findings do not name Secure Boot: {diagnosis!r}")
        self.show("driver error", str(err))
        return problems

    def bootstrap_guest(self) -> list[OpResult]:
        """Wait for cloud-init and apt/dpkg locks, repair dpkg (``provisioners.guest.bootstrap``)."""
        bootstrap = require("provisioners.guest.bootstrap", "issue #4, guest bootstrap")
        session = self.open_session()
        with self.busy("bootstrap: cloud-init, apt locks"):
            results = list(bootstrap.bootstrap(session, self.catalog, self.vm) or [])
        return self.record("bootstrap", results)

    def _component(self, name: str) -> Any:
        return require(f"provisioners.guest.{name}", f"issue #4, {name} component").component(self.catalog, self.vm)

    def converge(self, name: str) -> list[OpResult]:
        """facts -> plan -> apply for one guest component (``driver``, ``cuda``, ``vllm``,
        ``ollama``). Returns its operation results; the plan and results go to the report.
        A DeployError is kept in :attr:`last_error` and re-raised."""
        self._need_catalog()
        comp = self._component(name)
        session = self.open_session()
        start = time.monotonic()
        try:
            facts = comp.facts(session)
            self.captures.update({f"{name}:{k}": v for k, v in (getattr(facts, "raw", {}) or {}).items()})
            changes = comp.plan(facts)
            self.show(f"{name} plan", "\n".join(str(c) for c in changes) or "no changes")
            with self.busy(f"{name}: applying {len(changes)} change(s)"):
                results = list(comp.apply(session, facts, changes))
        except DeployError as err:
            self.last_error = err
            self.captures.update(err.evidence or {})
            self.record(name, [OpResult(f"converge {name}", "failed", reason=err.what,
                                        duration_s=time.monotonic() - start)])
            raise
        self.show(f"{name} operations", "\n".join(str(r) for r in results) or "nothing to do")
        return self.record(name, results)

    def converge_expecting_failure(self, name: str) -> DeployError:
        """:meth:`converge` where the scenario expects a failure; returns the DeployError."""
        try:
            self.converge(name)
        except DeployError as err:
            self.show(f"{name} error", str(err))
            return err
        raise AssertionError(f"the {name} component converged, but this scenario expects it to fail")

    def redeploy(self) -> list[Record]:
        """The whole deployment again (VM + bootstrap + every component); returns this pass's
        records (the idempotency scenario checks they are all ``ok``)."""
        before = len(self.records)
        self.ensure_vm()
        self.bootstrap_guest()
        for name in ("driver", "cuda", "vllm", "ollama"):
            self.converge(name)
        return self.records[before:]

    def run_verify_ladder(self, area: str) -> list[Any]:
        """Run the read-only checks of one area (``gpu``, ``driver``, ``vllm``, ``ollama``) from
        ``provisioners.verify``; each check's evidence is queued for the report."""
        verify = require("provisioners.verify", "issue #4, verify ladder")
        checks = list(verify.run_ladder(self.open_session(), self.catalog, self.vm, area))
        for check in checks:
            status = "PASS" if check.passed else "FAIL"
            self.show(f"{area}: {check.name} [{status}]",
                      f"expected: {check.expected}\nactual: {check.actual}\n\n{check.evidence}")
            self.captures[f"verify:{check.name}"] = check.evidence
        self.last_checks = checks
        return checks

    def check_problems(self, wanted: list[str]) -> list[str]:
        """Every check of the last ladder run must have passed, and every check named in
        ``wanted`` (case-insensitive substring either way) must be among them. Returns problems
        (empty = fine)."""
        checks = self.last_checks
        if checks is None:
            raise AssertionError("no verify ladder ran in this scenario")
        problems = [f"{c.name}: expected {c.expected}, got {c.actual}" for c in checks if not c.passed]
        for name in wanted:
            if not any(name.lower() in c.name.lower() or c.name.lower() in name.lower() for c in checks):
                problems.append(f"{name}: no such check in the verify ladder")
        return problems

    def snapshot_services(self, units: list[str]) -> dict[str, dict[str, str]]:
        """``systemctl show -p MainPID -p ActiveEnterTimestamp`` of each unit (read-only).
        Returns unit -> {property: value}."""
        session = self.open_session()
        snap: dict[str, dict[str, str]] = {}
        for unit in units:
            out = session.run(f"systemctl show -p MainPID -p ActiveEnterTimestamp {unit}", check=True).stdout
            snap[unit] = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        self.show("service snapshot", "\n".join(f"{u}: {v}" for u, v in snap.items()))
        return snap

    def close(self) -> None:
        """Close the SSH session and any lab fault host (the PVE client holds no connection)."""
        self.end_scenario()
        if self.session is not None:
            try:
                self.session.close()
            finally:
                self.session = None


def _lab_cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=1800)


def _has(obj: Any, dotted: str) -> bool:
    try:
        return setting(obj, dotted) is not None
    except KeyError:
        return False


def _is_blocking(finding: Any) -> bool:
    """A pre-flight finding (``provisioners.vm.Finding``: ``severity`` error|warning|info) blocks
    when its severity is error."""
    return str(finding.severity).lower() == "error"
