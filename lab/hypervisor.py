"""``LabPve``: the lab's Proxmox VE - fakepve (+ the GPU gaps of ``GpuFakePve``) whose VM
lifecycle drives a real qemu guest (:mod:`lab.guest`).

Mapping of PVE operations (API paths under ``/nodes/{node}/qemu/{vmid}``) to the guest:

======================  ===========================================================================
``status/start``        boots qemu; the task ends ``OK`` once qemu runs (as PVE's ``qmstart``), or
                        ``start failed: QEMU exited with code N`` with qemu's stderr in the task log
``status/stop``         qemu ``quit`` (hard stop, as PVE)
``status/shutdown``     ACPI power button; waits up to ``timeout`` (PVE default 60 s), then
                        ``forceStop=1`` kills, otherwise ``VM quit/powerdown failed - got timeout``
``status/reboot``       ACPI shutdown, then a new qemu process (fresh seed from the current config,
                        pending changes applied) - PVE's reboot is also a stop + start
``status/reset``        QMP ``system_reset``
``status/suspend|resume``  QMP ``stop`` / ``cont`` (to-disk suspend stops qemu)
``DELETE`` (destroy)    the overlay and seed are deleted: a re-created VM is a fresh machine
``POST /qemu`` (create) any leftover files of that vmid are deleted first
======================  ===========================================================================

A reboot started inside the guest resets qemu in place (no ``-no-reboot``); a poweroff inside the
guest makes qemu exit, and the watcher (:meth:`LabPve.watch`) marks the VM ``stopped``, as PVE does.

The cached base image is listed on storage ``local`` as ``local:import/lab-debian-12.qcow2``
(content ``import``), so ``scsi0=<st>:0,import-from=local:import/lab-debian-12.qcow2`` works.
Only one guest runs at a time (one set of loopback ports); starting a second VM fails its task.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from typing import Any

from aiohttp import web
from fakepve import TaskError

from lab import state
from lab.guest import Guest, GuestSettings
from lab.image import DISK_GIB, VOLUME_NAME, BaseImage
from provisioners.errors import DeployError
from provisioners.redact import redact

try:  # H2's PCI-aware fake (issue #2); plain fakepve until it exists
    from lab.gpupve import GpuFakePve as _BasePve
except ImportError:  # pragma: no cover - only before lab/gpupve.py existed
    from fakepve import FakePve as _BasePve

log = logging.getLogger("lab.hypervisor")
_RECORDED_AT = web.RequestKey("lab_recorded_at", float)  # set by LabPve._record


def effective_config(vm) -> dict[str, Any]:
    """The config a (re)started VM runs with: ``vm.config`` with ``vm.pending`` applied
    (fakepve keeps ``key -> None`` for a pending delete)."""
    cfg = dict(vm.config)
    for key, val in getattr(vm, "pending", {}).items():
        if val is None:
            cfg.pop(key, None)
        else:
            cfg[key] = val
    return cfg


class LabPve(_BasePve):
    """fakepve whose VMs are real qemu guests.

    Args:
        image: the cached base image (:func:`lab.image.build`).
        paths, ports: lab state paths / loopback ports (default: from the environment).
        other keyword arguments: as ``GpuFakePve`` (``profile=``, ``user=``, ``password=``,
        ``host=``, ``port=``).

    ``time_scale`` is 1.0 (PVE seconds are real seconds; tasks run in the background and
    clients poll them, as with PVE).
    """

    def __init__(self, image: BaseImage, paths: state.LabPaths | None = None,
                 ports: state.Ports | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image = image
        self.lab_paths = paths or state.paths()
        self.lab_ports = ports or state.ports()
        self.time_scale = 1.0
        self.guests: dict[int, Guest] = {}
        # one worker: qemu operations never overlap, and the thread that forks qemu lives as long
        # as the lab (qemu's PR_SET_PDEATHSIG follows the forking thread)
        self._qemu_ops = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lab-qemu")
        self._busy: set[int] = set()
        store = self.storages["local"]
        content = [c for c in str(store.get("content", "")).split(",") if c]
        if "import" not in content:
            store["content"] = ",".join(content + ["import"])
        self.store_file("local", VOLUME_NAME, DISK_GIB * 2**30, content="import")

    # --------------------------------------------------------------- helpers
    async def _in_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._qemu_ops, fn, *args)

    def _guest(self, vmid: int) -> Guest:
        g = self.guests.get(int(vmid))
        if g is None:
            g = self.guests[int(vmid)] = Guest(int(vmid), self.image, self.lab_paths, self.lab_ports)
        return g

    def _lab_task_log(self, ttype: str, vmid: int, lines: list[str]) -> None:
        for record in reversed(self.tasklog):
            if record["type"] == ttype and record["id"] == str(vmid) and record["status"] == "running":
                record["log"].extend(redact(line) for line in lines)
                return

    async def _boot(self, vm, ttype: str) -> None:
        other = [g.vmid for g in self.guests.values() if g.running() and g.vmid != vm.vmid]
        if other:
            raise TaskError(f"lab: only one guest VM can run at a time (VM {other[0]} is running)")
        settings = GuestSettings.from_pve(vm.vmid, effective_config(vm))
        guest = self._guest(vm.vmid)
        try:
            pid = await self._in_worker(guest.start, settings)
        except DeployError as err:
            self._lab_task_log(ttype, vm.vmid, [ln for ln in (err.cause or "").splitlines() if ln])
            raise TaskError(err.what) from err
        log.info("VM %s: qemu pid %s started", vm.vmid, pid)

    async def _halt(self, vm, timeout: float | None) -> str | None:
        """ACPI shutdown (``timeout`` s) or, with ``timeout`` None, an immediate stop."""
        guest = self.guests.get(vm.vmid)
        if guest is None or not guest.running():
            return None
        if timeout is not None and await self._in_worker(guest.powerdown, timeout):
            return None
        await self._in_worker(guest.kill)
        return None if timeout is None else "VM still running - terminating now with SIGTERM"

    # -------------------------------------------------------- fakepve hooks
    async def on_vm_start(self, vm) -> None:
        """GpuFakePve hook: inside the ``qmstart`` task, after PCI checks. Boots the guest."""
        await self._boot(vm, "qmstart")

    async def task(self, node, ttype, tid, user, body, vm=None, lock=True, log=()):
        """Model.task with the qemu side of stop/shutdown/reboot/reset/suspend/resume/destroy."""
        if vm is None or ttype not in ("qmstop", "qmshutdown", "qmreboot", "qmreset", "qmsuspend",
                                       "qmresume", "qmdestroy", "qmcreate"):
            return await super().task(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)
        inner = body
        params = getattr(vm, "_lab_params", {}) or {}
        vm._lab_params = {}

        async def wrapped():
            self._busy.add(vm.vmid)
            try:
                return await self._around(ttype, vm, inner, params)
            finally:
                self._busy.discard(vm.vmid)
        return await super().task(node, ttype, tid, user, wrapped, vm=vm, lock=lock, log=log)

    async def _around(self, ttype: str, vm, inner, params: dict):
        guest = self.guests.get(vm.vmid)
        if ttype == "qmcreate":
            note = await inner()
            await self._in_worker(self._guest(vm.vmid).wipe)  # leftovers of an earlier VM
            return note
        if ttype == "qmshutdown":
            timeout = float(params.get("timeout") or self.shutdown_default_timeout)
            if guest and guest.running():
                if not await self._in_worker(guest.powerdown, timeout):
                    if str(params.get("forceStop", "0")) not in ("1", "true"):
                        raise TaskError("VM quit/powerdown failed - got timeout")
                    await self._in_worker(guest.kill)
                    await inner()
                    return "VM still running - terminating now with SIGTERM"
            return await inner()
        if ttype == "qmreboot":
            timeout = float(params.get("timeout") or self.shutdown_default_timeout)
            note = await self._halt(vm, timeout)
            result = await inner()
            if vm.status == "running":
                await self._boot(vm, ttype)
            return "\n".join(x for x in (note, result) if x) or None
        note = await inner()
        if ttype == "qmstop":
            await self._halt(vm, None)
        elif ttype == "qmreset" and guest and guest.running():
            await self._in_worker(guest.reset)
        elif ttype == "qmsuspend" and guest and guest.running():
            if vm.status == "stopped":  # to disk
                await self._halt(vm, None)
            else:
                await self._in_worker(guest.qmp, "stop")
        elif ttype == "qmresume" and guest and guest.running():
            await self._in_worker(guest.qmp, "cont")
        elif ttype == "qmdestroy" and vm not in self.vms:
            await self._in_worker(self._guest(vm.vmid).wipe)
            self.guests.pop(vm.vmid, None)
        return note

    async def _do_shutdown(self, vm, user, p):
        vm._lab_params = dict(p)
        return await super()._do_shutdown(vm, user, p)

    async def _do_reboot(self, vm, user, p):
        vm._lab_params = dict(p)
        return await super()._do_reboot(vm, user, p)

    # ------------------------------------------------------ request log file
    # fakepve keeps its request record in memory (``pve.requests``), in the lab server's process;
    # tests in another process read this file instead (``make verify`` must only read).
    REQUEST_LOG_NAME = "pve-requests.jsonl"

    @property
    def request_log(self):
        """``<lab state dir>/pve-requests.jsonl``: one JSON object per API request fakepve
        recorded, ``{"method", "path", "status", "time"}`` (``status``: the HTTP status code
        answered; ``time``: Unix seconds when the request was recorded). Never bodies, query
        strings or headers (tickets, tokens, passwords). Appended; read with
        :func:`lab.hypervisor.read_request_log`."""
        return self.lab_paths.root / self.REQUEST_LOG_NAME

    def _record(self, request, body):
        """fakepve's hook, plus a mark for :meth:`_middleware` to write the request's log line."""
        super()._record(request, body)
        request[_RECORDED_AT] = time.time()

    @web.middleware
    async def _middleware(self, request, handler):
        status = 599  # no answer (dropped connection, cancelled request)
        try:
            response = await super()._middleware(request, handler)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            at = request.get(_RECORDED_AT)
            if at is not None:
                line = json.dumps({"method": request.method, "path": request.path,
                                   "status": status, "time": round(at, 3)})
                try:
                    with open(self.request_log, "a", encoding="utf-8") as fh:
                        fh.write(redact(line) + "\n")
                except OSError:  # a full disk must not break the API the deployer talks to
                    log.exception("writing %s", self.request_log)

    # ------------------------------------------------------------- watcher
    def reconcile(self) -> list[str]:
        """One watcher pass: a guest whose qemu exited on its own (poweroff inside the guest, a
        crash) while PVE says running is marked ``stopped``. Returns what changed (for the log)."""
        changed = []
        for vmid, guest in list(self.guests.items()):
            if vmid in self._busy or guest.proc is None:
                continue
            code = guest.proc.poll()
            if code is None:
                continue
            guest.proc = None
            guest.pidfile.unlink(missing_ok=True)
            vm = self.vm(vmid)
            if vm is not None and vm.status == "running":
                vm.status = vm.qmpstatus = "stopped"
                vm.started_at = None
            changed.append(f"VM {vmid}: qemu exited with code {code} (guest powered off)")
        return changed

    async def watch(self, interval_s: float = 1.0) -> None:
        """Run :meth:`reconcile` every ``interval_s`` seconds until cancelled."""
        while True:
            for line in self.reconcile():
                log.info("%s", line)
            await asyncio.sleep(interval_s)

    def status(self) -> dict[str, Any]:
        """``{"vms": [{"vmid", "name", "status", "qemu_pid", "started_at"}]}`` for ``lab status``."""
        out = []
        for vm in sorted(self.vms, key=lambda v: v.vmid):
            g = self.guests.get(vm.vmid)
            running = g is not None and g.running()
            out.append({"vmid": vm.vmid, "name": vm.name, "status": vm.status,
                        "qemu_pid": g.proc.pid if running else None,
                        "started_at": g.started_at if running else None})
        return {"vms": out, "time": time.time()}

    def shutdown_guests(self) -> None:
        """Kill every guest (lab exit). Blocking; safe to call from any thread and twice."""
        for guest in list(self.guests.values()):
            try:
                guest.kill()
            except Exception:  # noqa: BLE001 - exit path: keep killing the rest
                log.exception("killing VM %s", guest.vmid)
        self._qemu_ops.shutdown(wait=False)


def read_request_log(path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The request-log entries (see :attr:`LabPve.request_log`) written at byte ``offset`` or
    later, and the offset of the end of the last complete line (pass it back to read only what
    comes after). A missing file reads as no entries. Raises ``ValueError`` on a malformed line."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    complete = data[:data.rfind(b"\n") + 1]  # a line still being written is read next time
    entries = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
    return entries, offset + len(complete)


def writes_in(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries that may change PVE state: every method but GET/HEAD, except the login
    ``POST /api2/json/access/ticket`` (it creates a ticket, not a PVE object)."""
    return [e for e in entries if e["method"] not in ("GET", "HEAD")
            and not (e["method"] == "POST" and e["path"].rstrip("/").endswith("/access/ticket"))]
