"""``GpuFakePve``: fakepve plus the PCI passthrough parts of Proxmox VE it does not model.

fakepve 0.5.0 (PyPI) answers every PVE 9 API path, but (checked, see ``../shared/DESIGN.md`` §5):

- ``GET /nodes/{node}/hardware/pci`` is synthesised (one device called "fake");
- ``/cluster/mapping/pci`` is not stateful;
- ``hostpciN`` values are accepted without PVE's rules (root-only raw ``host=``, mapping lookup)
  and a VM start never looks at the PCI devices;
- three more gaps met while building the deployer: ``GET /nodes/{node}/tasks/{upid}/log?limit=0``
  returns no lines (PVE: the whole log); ``scsi0=<st>:0,import-from=<volid>`` keeps
  the ``import-from`` option and a 0-byte disk instead of importing the volume, and
  ``PUT /nodes/{node}/qemu/{vmid}/resize`` changes nothing.

This module fills exactly those, as routes registered through fakepve's own
``_register_stateful`` mechanism (``_routes_<area>`` tables, which run before the generic
catch-all) and overrides of its create/config/start handlers. Everything else stays fakepve's.
Error texts are PVE's own (qemu-server ``PVE/API2/Qemu.pm``, ``PVE/QemuServer/PCI.pm``,
pve-manager ``PVE/API2/Cluster/Mapping/PCI.pm``); see ``../shared/corpus/pve_passthrough_error_texts.md``.

Extending (the lab hypervisor, ``lab/hypervisor.py``, boots a real guest):

- ``async on_vm_start(vm)``: called inside the start task once PCI checks passed, before the VM
  is marked running; raise ``fakepve.TaskError(text)`` to fail the start with ``TASK ERROR: text``.
- stop / shutdown / reboot / destroy stay fakepve's: override ``_do_stop(vm, user, p)``,
  ``_do_shutdown``, ``_do_reboot`` and ``_qm_destroy(v, user)`` and call ``super()``; with
  ``time_scale == 0`` the task has finished when ``super()`` returns (``vm.status`` tells).
- ``lose_response(method, suffix)`` is a test fault (not a PVE gap): the request is carried out
  and the answer lost, to prove that a create is never re-sent blindly.
- ``pci_devices_for_profile(name)`` is the device list of a GPU profile; ``lab/profiles.py``
  may pass its own list as ``GpuFakePve(profile={"name": ..., "pci_devices": [...], "iommu": bool})``.
"""
from __future__ import annotations

import copy
import re
import time
from typing import Any

from fakepve import FakePve, PveError, TaskError
from fakepve.lxc import SIZE_UNITS, format_size
from fakepve.qemu import split_drive, join_drive
from fakepve.routing import die

__all__ = ["GpuFakePve", "pci_devices_for_profile", "GPU_PATH", "PROFILES_WITHOUT_GPU", "PROFILES_WITHOUT_IOMMU"]

#: PCI address (all functions) of the lab GPU, as `lspci` shows it on the reference host.
GPU_PATH = "0000:01:00"
#: Profiles in which the node has no NVIDIA GPU / no IOMMU; every other profile has the RTX 5060 Ti.
PROFILES_WITHOUT_GPU = frozenset({"no-gpu"})
PROFILES_WITHOUT_IOMMU = frozenset({"no-iommu"})

# GPU + its HDMI audio function, IOMMU group 14. source: ../shared/corpus/lspci-nn_rtx5060ti_proxmox_and_iommu.txt
# (ids, class, names, group). Field names and the "0x"-prefixed spelling are PVE's /hardware/pci
# (PVE::SysFSTools::lspci). The subsystem ids are SYNTHESISED (a ZOTAC card: vendor 0x19da).
_RTX5060TI = [
    {"id": "0000:01:00.0", "class": "0x030000", "vendor": "0x10de", "vendor_name": "NVIDIA Corporation",
     "device": "0x2d04", "device_name": "GB206 [GeForce RTX 5060 Ti]", "iommugroup": 14,
     "subsystem_vendor": "0x19da", "subsystem_vendor_name": "Zotac International (MCO) Ltd.",
     "subsystem_device": "0x1771", "subsystem_device_name": ""},
    {"id": "0000:01:00.1", "class": "0x040300", "vendor": "0x10de", "vendor_name": "NVIDIA Corporation",
     "device": "0x22eb", "device_name": "GB206 High Definition Audio Controller", "iommugroup": 14,
     "subsystem_vendor": "0x19da", "subsystem_vendor_name": "Zotac International (MCO) Ltd.",
     "subsystem_device": "0x1771", "subsystem_device_name": ""},
]
# The rest of the host: SYNTHESISED, typical Intel chipset devices, so that listings and the
# default class blacklist (05;06;0b: memory, bridges, processors) have something to act on.
_HOST = [
    {"id": "0000:00:00.0", "class": "0x060000", "vendor": "0x8086", "vendor_name": "Intel Corporation",
     "device": "0x4c43", "device_name": "Host bridge", "iommugroup": 0},
    {"id": "0000:00:01.0", "class": "0x060400", "vendor": "0x8086", "vendor_name": "Intel Corporation",
     "device": "0x4c01", "device_name": "PCI Express Root Port", "iommugroup": 1},
    {"id": "0000:00:14.0", "class": "0x0c0330", "vendor": "0x8086", "vendor_name": "Intel Corporation",
     "device": "0x43ed", "device_name": "USB 3.2 Gen 2x1 xHCI Host Controller", "iommugroup": 5},
    {"id": "0000:00:17.0", "class": "0x010601", "vendor": "0x8086", "vendor_name": "Intel Corporation",
     "device": "0x43d2", "device_name": "SATA Controller [AHCI mode]", "iommugroup": 6},
    {"id": "0000:02:00.0", "class": "0x020000", "vendor": "0x8086", "vendor_name": "Intel Corporation",
     "device": "0x15f3", "device_name": "Ethernet Controller I225-V", "iommugroup": 15},
]

_HOSTPCI_KEY = re.compile(r"^hostpci\d+$")
_SIZE = re.compile(r"^(\+)?(\d+(?:\.\d+)?)([KMGT])?$")


def pci_devices_for_profile(profile: str) -> list[dict[str, Any]]:
    """The ``/nodes/{node}/hardware/pci`` entries of a node in GPU profile ``profile``.

    Returns a fresh list of dicts (PVE's schema: ``id``, ``class``, ``vendor``, ``device``,
    ``iommugroup`` (int, -1 without IOMMU), ``*_name``, ``subsystem_*``). ``no-gpu`` has no
    NVIDIA device; ``no-iommu`` has it with every ``iommugroup`` -1 (PVE shows -1 when
    ``/sys/kernel/iommu_groups`` is empty); any other name is a healthy RTX 5060 Ti host.
    """
    devices = copy.deepcopy(_HOST if profile in PROFILES_WITHOUT_GPU else _HOST[:4] + _RTX5060TI + _HOST[4:])
    if profile in PROFILES_WITHOUT_IOMMU:
        for dev in devices:
            dev["iommugroup"] = -1
    return devices


def _parse_map_entry(text: str) -> dict[str, str]:
    """``node=pve,path=0000:01:00,id=10de:2d04,iommugroup=14`` -> dict."""
    out = {}
    for part in str(text).split(","):
        key, _, value = part.partition("=")
        if key:
            out[key.strip()] = value.strip()
    return out


def _parse_hostpci(value: str) -> dict[str, str]:
    """A ``hostpciN`` value as PVE's ``pve-qm-hostpci`` format reads it: the bare first item is ``host``."""
    out: dict[str, str] = {}
    for n, part in enumerate(str(value).split(",")):
        key, eq, val = part.partition("=")
        if not eq:
            if n == 0:
                out["host"] = key
            continue
        out[key] = val
    return out


class GpuFakePve(FakePve):
    """fakepve with PVE's PCI passthrough behaviour for one GPU profile.

    Args:
        profile: a profile name (``"rtx5060ti"``, ``"no-gpu"``, ``"no-iommu"``, or any lab profile
            name: see :func:`pci_devices_for_profile`) or a dict ``{"name", "pci_devices", "iommu"}``.
        node: the node's name (default ``pve1``, fakepve's own and the lab catalog's); the only node.
        other arguments: as :class:`fakepve.FakePve`.

    State and fault knobs (set on the instance, any time):
        ``pci_devices`` (list of dicts), ``iommu`` (bool), ``pci_mappings`` (id -> {"map": [str],
        "description": str}), ``vfio_busy`` (True: a start fails with QEMU's
        ``Device or resource busy`` line and ``start failed: QEMU exited with code 1``),
        ``gpu_start_secs`` (PVE seconds a start with a hostpci device takes; scaled by
        ``time_scale``), ``lose_response(method, suffix, times=1)`` (the request is carried out but
        the connection closes before the answer: a lost response).
    """

    def __init__(self, profile: str | dict = "rtx5060ti", node: str = "pve1", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node_name = node
        self.nodes = {node: {"online": True}}
        if isinstance(profile, dict):
            self.profile = str(profile.get("name", "custom"))
            devices = profile.get("pci_devices")
            self.pci_devices = copy.deepcopy(devices) if devices is not None else pci_devices_for_profile(self.profile)
            self.iommu = bool(profile.get("iommu", self.profile not in PROFILES_WITHOUT_IOMMU))
        else:
            self.profile = profile
            self.pci_devices = pci_devices_for_profile(profile)
            self.iommu = profile not in PROFILES_WITHOUT_IOMMU
        self.pci_mappings: dict[str, dict[str, Any]] = {}
        self.vfio_busy = False
        self.gpu_start_secs = 0.0
        self._lost_responses: dict[tuple[str, str], int] = {}
        # The cloud image is imported from `local`; PVE >= 8.4 knows the `import` content type.
        self.storages["local"]["content"] = "iso,vztmpl,backup,import"

    # ------------------------------------------------------------ helpers for tests and the lab

    def add_pci_mapping(self, mapping_id: str, path: str = GPU_PATH, node: str | None = None,
                        pci_id: str = "10de:2d04", iommugroup: int | None = 14, description: str = "") -> None:
        """Create cluster PCI mapping ``mapping_id`` as an administrator would in the GUI."""
        entry = f"node={node or self.node_name},path={path},id={pci_id}"
        if iommugroup is not None:
            entry += f",iommugroup={iommugroup}"
        self.pci_mappings[mapping_id] = {"map": [entry], "description": description}

    def lose_response(self, method: str, suffix: str, times: int = 1) -> None:
        """Carry out the next ``times`` ``method`` requests whose path ends with ``suffix``, then
        close the connection instead of answering (a response lost on the network)."""
        self._lost_responses[(method.upper(), suffix)] = times

    # ------------------------------------------------------------------------- routes

    def _routes_gpu(self):
        mapping = "/cluster/mapping/pci"
        return [("GET", "/nodes/{node}/hardware/pci", self._hw_pci),
                ("GET", mapping, self._map_list), ("POST", mapping, self._map_create),
                ("GET", mapping + "/{id}", self._map_get), ("PUT", mapping + "/{id}", self._map_update),
                ("DELETE", mapping + "/{id}", self._map_delete),
                ("PUT", "/nodes/{node}/qemu/{vmid}/resize", self._qm_resize)]

    async def _hw_pci(self, v, user):
        """GET /nodes/{node}/hardware/pci: classes in ``pci-class-blacklist`` (default 05;06;0b) left out."""
        blacklist = [c for c in re.split(r"[;,\s]+", str(v.get("pci-class-blacklist", "05;06;0b"))) if c]
        verbose = str(v.get("verbose", "1")) not in ("0", "false")
        out = []
        for dev in self.pci_devices:
            cls = str(dev.get("class", "")).lower().removeprefix("0x")
            if any(cls.startswith(b.lower()) for b in blacklist):
                continue
            item = dict(dev)
            if not verbose:
                item = {k: x for k, x in item.items() if not k.endswith("_name")}
            out.append(item)
        return sorted(out, key=lambda d: d["id"])

    # Behaviour and texts: pve-manager PVE/API2/Cluster/Mapping/PCI.pm (index/get/create/update/delete).

    def _map_digest(self) -> str:
        from fakepve.routing import sha1
        return sha1(repr(sorted((k, sorted(v["map"]), v.get("description", "")) for k, v in self.pci_mappings.items())))

    def _map_view(self, mapping_id):
        data = self.pci_mappings[mapping_id]
        out = {"map": list(data["map"]), "type": "pci", "digest": self._map_digest()}
        if data.get("description"):
            out["description"] = data["description"]
        return out

    async def _map_list(self, v, user):
        out = []
        for mapping_id in sorted(self.pci_mappings):
            path = "/mapping/pci/" + mapping_id
            if not any(self.allowed(user, path, p) for p in ("Mapping.Modify", "Mapping.Use", "Mapping.Audit")):
                continue
            item = self._map_view(mapping_id)
            item.pop("type")
            item["id"] = mapping_id
            if v.get("check-node"):
                item["checks"] = self._map_checks(mapping_id, v["check-node"])
            out.append(item)
        return out

    def _map_checks(self, mapping_id, node):
        checks = []
        entries = [e for e in (_parse_map_entry(m) for m in self.pci_mappings[mapping_id]["map"]) if e.get("node") == node]
        if not entries:
            checks.append({"severity": "warning", "message": f"No mapping for node {node}."})
        for entry in entries:
            if not self._functions_of(entry.get("path", "")):
                checks.append({"severity": "error",
                               "message": f"Invalid configuration: pci device '{entry.get('path')}' not found\n"})
        return checks

    async def _map_get(self, v, user):
        if v["id"] not in self.pci_mappings:
            raise die(f"mapping '{v['id']}' not found")
        return self._map_view(v["id"])

    @staticmethod
    def _map_values(value):
        return [value] if isinstance(value, str) else list(value or [])

    async def _map_create(self, v, user):
        if v["id"] in self.pci_mappings:
            raise die(f"pci ID '{v['id']}' already defined")
        self.pci_mappings[v["id"]] = {"map": self._map_values(v.get("map")), "description": v.get("description", "")}
        return None

    async def _map_update(self, v, user):
        from fakepve.routing import check_digest
        if v.get("digest"):
            check_digest(self._map_digest(), v["digest"])
        data = self.pci_mappings.get(v["id"])
        if data is None:
            raise die(f"pci ID '{v['id']}' does not exist")
        for key in [k for k in re.split(r"[,;\s]+", str(v.get("delete") or "")) if k]:
            if key == "description":
                data["description"] = ""
        if v.get("map") is not None:
            data["map"] = self._map_values(v["map"])
        if v.get("description") is not None:
            data["description"] = v["description"]
        return None

    async def _map_delete(self, v, user):
        self.pci_mappings.pop(v["id"], None)  # PVE: no error for an unknown id
        return None

    # ------------------------------------------------------------------- hostpci rules

    def _check_hostpci(self, user, key, value, current=None):
        """PVE's check_hostpci_perm (qemu-server API2/Qemu.pm) for one key being set or deleted."""
        if user is None:
            return
        for val in (value, current):
            if val is None:
                continue
            opts = _parse_hostpci(val)
            if opts.get("mapping"):
                if val is value and opts["mapping"] not in self.pci_mappings:
                    raise PveError(500, f"PCI device mapping not found for '{opts['mapping']}'")
                self.require(user, "/mapping/pci/" + opts["mapping"], "Mapping.Use")
            elif opts.get("host"):
                if user != "root@pam":
                    raise PveError(500, f"only root can set '{key}' config for non-mapped devices")
            elif val is value:
                raise PveError(400, "Parameter verification failed.", {key: "either 'host' or 'mapping' must be set."})

    async def _qm_create(self, v, user):
        for key in sorted(k for k in v if _HOSTPCI_KEY.match(k)):
            self._check_hostpci(user, key, v[key])
        return await super()._qm_create(v, user)

    async def _apply_config(self, vm, user, p):
        deletes = [k for k in str(p.get("delete", "") or "").split(",") if k]
        for key in sorted(k for k in p if _HOSTPCI_KEY.match(k)):
            self._check_hostpci(user, key, p[key], vm.config.get(key))
        for key in deletes:
            if _HOSTPCI_KEY.match(key) and key in vm.config:
                self._check_hostpci(user, key, None, vm.config[key])
        return await super()._apply_config(vm, user, p)

    # ------------------------------------------------------------------- import-from and resize

    def _qm_new_drive(self, vmid, key, value, default):
        volume, props = split_drive(value)
        source = props.get("import-from")
        if not source:
            return super()._qm_new_drive(vmid, key, value, default)
        src = self._qm_volume(source)
        if src is None:  # wording: fakepve's error catalogue for POST /nodes/{node}/qemu (can_t_find_file)
            raise die(f"can't find file '{source}'")
        sid = volume.split(":", 1)[0] if ":" in volume else default
        size = int(src.get("size") or 0)
        volid, _fmt = self._qm_alloc(sid, vmid, props.pop("format", None), size)
        props.pop("import-from")
        props["size"] = format_size(size)
        return join_drive(volid, props), [volid]

    async def _qm_resize(self, v, user):
        """PUT /nodes/{node}/qemu/{vmid}/resize (a task since PVE 8.0): grow only."""
        vm = self.find(v["node"], v["vmid"])
        self._check_lock(vm)
        disk = v["disk"]
        if disk not in vm.config:
            raise die(f"disk '{disk}' does not exist")
        volume, props = split_drive(vm.config[disk])
        m = re.match(r"^(\d+(?:\.\d+)?)([KMGT])?$", props.get("size", "0"))
        current = int(float(m.group(1)) * SIZE_UNITS.get(m.group(2) or "", 1)) if m else 0
        want = _SIZE.match(str(v["size"]))
        if not want:
            raise PveError(400, "Parameter verification failed.", {"size": "value does not match the regex pattern"})
        amount = int(float(want.group(2)) * SIZE_UNITS.get(want.group(3) or "", 1))
        new = current + amount if want.group(1) else amount
        if new < current:  # qemu-server API2/Qemu.pm resize_vm
            raise die("shrinking disks is not supported")

        async def body():
            if new == current:
                return None
            props["size"] = format_size(new)
            vm.config[disk] = join_drive(volume, props)
            vol = self._qm_volume(volume)
            if vol is not None:
                vol["size"] = new
            return None
        return await self.task(vm.node, "resize", vm.vmid, user, body, vm=vm)

    # ------------------------------------------------------------------------ start

    def _functions_of(self, path):
        """The devices at ``path`` (``0000:01:00`` = every function, ``0000:01:00.0`` = one)."""
        path = path.lower()
        if not re.match(r"^[0-9a-f]{4}:", path):
            path = "0000:" + path
        return [d for d in self.pci_devices if d["id"] == path or d["id"].startswith(path + ".")]

    def _hostpci_paths(self, vm, config):
        """(key, [device paths]) per hostpci entry; mapping lookups per PVE's parse_hostpci."""
        out = []
        for key in sorted(k for k in config if _HOSTPCI_KEY.match(k)):
            opts = _parse_hostpci(config[key])
            if opts.get("mapping"):
                data = self.pci_mappings.get(opts["mapping"])
                entries = [e for e in (_parse_map_entry(m) for m in (data or {}).get("map", []))
                           if e.get("node") == vm.node]
                if not entries:
                    raise TaskError(f"PCI device mapping not found for '{opts['mapping']}'")
                paths = [p for e in entries for p in e.get("path", "").split(";") if p]
            else:
                paths = [p for p in opts.get("host", "").split(";") if p]
            out.append((key, paths))
        return out

    def _pci_start_problem(self, vm):
        """Why a start of ``vm`` fails on this host, as (log lines, exit status), or None."""
        config = {**vm.config, **{k: x for k, x in vm.pending.items() if x is not None}}
        try:
            entries = self._hostpci_paths(vm, config)
        except TaskError as e:
            return [], str(e)
        for _key, paths in entries:
            for path in paths:
                if not self._functions_of(path):
                    return [], f"no PCI device found for '{path}'"
        if entries and not self.iommu:
            return [], "cannot prepare PCI pass-through, IOMMU not present"
        for key, paths in entries:
            for path in paths:
                for dev in self._functions_of(path):
                    other = self._pci_user(dev["id"], vm)
                    if other is not None:
                        return [], f"PCI device '{dev['id']}' already in use by VMID '{other}'"
        if entries and self.vfio_busy:
            key, paths = entries[0]
            dev = self._functions_of(paths[0])[0]
            n = key[len("hostpci"):]
            line = (f"kvm: -device vfio-pci,host={dev['id']},id={key}.0,bus=ich9-pcie-port-{int(n) + 1},"
                    f"addr=0x0.0,multifunction=on: vfio {dev['id']}: failed to open /dev/vfio/"
                    f"{dev['iommugroup']}: Device or resource busy")
            return [line], "start failed: QEMU exited with code 1"
        return None

    def _pci_user(self, device_id, me):
        for other in self.vms:
            if other is me or other.status != "running":
                continue
            try:
                entries = self._hostpci_paths(other, other.config)
            except TaskError:
                continue
            for _key, paths in entries:
                if any(device_id in [d["id"] for d in self._functions_of(p)] for p in paths):
                    return other.vmid
        return None

    async def on_vm_start(self, vm) -> None:
        """Hook: the VM's QEMU process starts (override in the lab hypervisor). Raise TaskError to fail."""
        return None

    async def _do_start(self, vm, user, p):
        if vm.ha_managed and not vm.template:
            return await super()._do_start(vm, user, p)

        async def body():
            # PVE::QemuServer::vm_start: these are task errors, not HTTP ones.
            if vm.template:
                raise TaskError("you can't start a vm if it's a template")
            if vm.lock and vm.lock != "suspended":
                raise TaskError(f"VM is locked ({vm.lock})")
            if vm.status == "running":
                raise TaskError(f"VM {vm.vmid} already running")
            problem = self._pci_start_problem(vm)
            if problem is not None:
                lines, status = problem
                record = self._running_task("qmstart", vm.vmid)
                if record is not None:
                    record["log"].extend(lines)
                raise TaskError(status)
            await self.ceph_io(vm)
            has_pci = any(_HOSTPCI_KEY.match(k) for k in vm.config)
            await self.pause(vm.start_secs + (self.gpu_start_secs if has_pci else 0))
            if vm.start_error:
                raise TaskError(vm.start_error)
            await self.on_vm_start(vm)
            vm.apply_pending()
            if vm.lock == "suspended":
                vm.lock = None
                vm.config.pop("lock", None)
            vm.status = vm.qmpstatus = "running"
            vm.started_at = time.time()
        return await self.task(vm.node, "qmstart", vm.vmid, user, body, vm=vm)

    def _running_task(self, ttype, vmid):
        for record in reversed(self.tasklog):
            if record["type"] == ttype and record["id"] == str(vmid) and record["status"] == "running":
                return record
        return None

    # ----------------------------------------------------------------- lost responses

    async def _answer(self, request, handler, generic, path_node):
        response = await super()._answer(request, handler, generic, path_node)
        for (method, suffix), left in list(self._lost_responses.items()):
            if request.method == method and request.path.endswith(suffix) and left > 0:
                self._lost_responses[(method, suffix)] = left - 1
                if left - 1 <= 0:
                    del self._lost_responses[(method, suffix)]
                if request.transport is not None:
                    request.transport.close()
        return response

    # ----------------------------------------------------------------------- task log

    async def _task_log(self, request):
        """PVE's ``limit=0`` means the whole log (pve-common ``dump_logfile``); fakepve 0.5.0 returns none."""
        from fakepve.server import ok, params
        p = self._verify(request, await params(request))
        lines = self._get_task(request)["log"]
        start, limit = p.get("start", 0), p.get("limit", 50)
        items = [{"n": n + 1, "t": t} for n, t in enumerate(lines)][start:]
        return ok(items if limit == 0 else items[:limit])


class ServedPve:
    """A fake PVE served on its own event loop in a daemon thread (for tests and the lab).

    ``ServedPve(pve, certfile, keyfile)`` starts it (https://pve.host:pve.port, port 0 = any free
    one); :meth:`stop` ends it. :meth:`call` runs a coroutine of the fake (``hold_config_lock``...)
    on its loop and returns the result (timeout seconds).
    """

    def __init__(self, pve: FakePve, certfile: str, keyfile: str, timeout_s: float = 30.0) -> None:
        import asyncio
        import threading
        self.pve = pve
        self.timeout_s = timeout_s
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"gpupve-{id(pve)}", daemon=True)
        self.thread.start()
        try:
            self.call(pve.start(certfile, keyfile))
        except BaseException:
            self._halt()
            raise

    def call(self, coro):
        import asyncio
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout_s)

    def _halt(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(self.timeout_s)

    def stop(self) -> None:
        from fakepve import settle
        try:
            self.call(settle())
            self.call(self.pve.stop())
        finally:
            self._halt()
