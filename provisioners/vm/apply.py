"""Apply the plan of one catalog VM: create (or converge), resize, start; roll back what this run created.

Order for a new VM: pre-flight (stops on any error before the first write) -> cloud image
(``POST /nodes/{n}/storage/{s}/download-url`` with ``content=import`` and a sha256 checksum) ->
PCI mapping (``POST /cluster/mapping/pci``, token logins) -> ``POST /nodes/{n}/qemu`` -> resize
``scsi0`` (``PUT .../resize``, a task since PVE 8.0) -> ``POST .../status/start`` with an explicit
``timeout``. Every task is awaited and its exitstatus checked.

If anything fails after this run created the VM, the VM is stopped and destroyed
(``DELETE /nodes/{n}/qemu/{vmid}?purge=1&destroy-unreferenced-disks=1``) - only if it still
carries our marker - and the error is raised with what PVE said and what to check.
A VM that existed before the run is never rolled back or destroyed.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from provisioners.errors import DeployError
from provisioners.proxmox import PveApiError, PveClient, PveConnectionLost, PveTaskFailed, PveTaskTimeout
from provisioners.redact import redact
from provisioners.results import Change, OpResult
from provisioners.vm.desired import MARKER_TAG, desired_config, has_marker, image_volid, split_tags
from provisioners.vm.live import LiveVm, read_live, vm_path
from provisioners.vm.plan import diff_plan, raw_pci
from provisioners.vm.power import start_vm, stop_vm
from provisioners.vm.preflight import Finding, preflight

log = logging.getLogger(__name__)

#: Seconds for tasks without a catalog setting: creating (imports the image), resizing, destroying,
#: downloading the cloud image (hundreds of MB).
CREATE_TIMEOUT_S = 900
RESIZE_TIMEOUT_S = 300
DESTROY_TIMEOUT_S = 300
DOWNLOAD_TIMEOUT_S = 1800
#: Seconds a rollback waits for a task of the VM that is still running (e.g. a slow start).
ROLLBACK_WAIT_S = 120


def _timed(name: str, fn: Callable[[], str | None]) -> OpResult:
    start = time.monotonic()
    reason = fn() or ""
    return OpResult(name, "changed", reason, time.monotonic() - start)


# --------------------------------------------------------------------------- prerequisites

def ensure_image(client: PveClient, catalog: Any, vm: Any) -> OpResult:
    """The cloud image volume exists in its storage, else PVE downloads it (checksum verified by PVE)."""
    volid = image_volid(catalog, vm)
    storage, _, name = volid.partition(":")
    filename = name.split("/", 1)[1] if "/" in name else name
    start = time.monotonic()
    content = client.get(f"/nodes/{client.node}/storage/{storage}/content", content="import") or []
    if any(item.get("volid") == volid for item in content):
        return OpResult(f"image {volid}", "ok", "already present")
    image = catalog.images[vm.image].cloud_image
    try:
        client.run_task("POST", f"/nodes/{client.node}/storage/{storage}/download-url", DOWNLOAD_TIMEOUT_S,
                        f"download of {image.url} to {volid}", url=str(image.url), content="import",
                        filename=filename, checksum=str(image.sha256), **{"checksum-algorithm": "sha256"})
    except (PveApiError, PveTaskFailed, PveTaskTimeout) as err:
        remedy = "\n  ".join(r for r in (err.remedy, (
            f"check images.{vm.image}.cloud_image: the url must be reachable from node {client.node} and sha256 "
            f"must be the image's (SHA256SUMS next to it); storage '{storage}' needs content 'import' "
            "(PVE >= 8.4); or put the image there yourself") ) if r)
        raise DeployError(f"cloud image {volid} could not be fetched; nothing was created: {err.what}",
                          cause=err.cause, remedy=remedy, evidence=dict(err.evidence), command=err.command) from None
    return OpResult(f"image {volid}", "changed", f"downloaded from {image.url}", time.monotonic() - start)


def ensure_mapping(client: PveClient, vm: Any) -> OpResult:
    """The cluster PCI mapping ``gpu.mapping`` exists (created for this node's GPU when missing).
    Not needed for a root@pam password login (raw ``host=``)."""
    gpu = vm.gpu
    name = f"PCI mapping {gpu.mapping}"
    if raw_pci(client) or not gpu.mapping:
        return OpResult(name, "ok", "not used by this login")
    if any(m.get("id") == gpu.mapping for m in client.get("/cluster/mapping/pci") or []):
        return OpResult(name, "ok", "exists")
    entry = f"node={client.node},path={gpu.address},id={gpu.expected.pci_id}"
    for dev in client.get(f"/nodes/{client.node}/hardware/pci") or []:
        if str(dev.get("id", "")).startswith(gpu.address + ".") and int(dev.get("iommugroup", -1)) >= 0:
            entry += f",iommugroup={int(dev['iommugroup'])}"
            break
    client.post("/cluster/mapping/pci", id=gpu.mapping, map=[entry],
                description=f"{gpu.expected.name} for VM {vm.vmid} (gpu-llm-deployer)")
    return OpResult(name, "changed", f"created: {entry}")


# ----------------------------------------------------------------------------- errors

def gpu_checks(vm: Any, client: PveClient) -> str:
    """What to check when a VM with the GPU fails to be created or started (for DeployError.remedy)."""
    gpu = vm.gpu
    short = gpu.address.split(":", 1)[1] if gpu.address.count(":") == 2 else gpu.address
    items = [
        "IOMMU: VT-d/AMD-Vi on in the firmware, intel_iommu=on on the node's kernel command line "
        "(`dmesg | grep -e DMAR -e IOMMU`, `find /sys/kernel/iommu_groups -type l`)",
        "another VM or process using the device ('PCI device ... already in use by VMID', "
        f"`grep hostpci /etc/pve/qemu-server/*.conf`; `lspci -nnk -s {short}` should show vfio-pci)",
        f"mapping/privileges: mapping '{gpu.mapping}' must point at {gpu.address} on node {client.node} and the "
        f"token needs Mapping.Use on /mapping/pci/{gpu.mapping}; a raw host= address needs the root@pam password login",
    ]
    head = f"check, for PCI device {gpu.address} ({gpu.expected.pci_id}, {gpu.expected.name}):"
    return head + "".join("\n    - " + item for item in items)


def _explain(err: DeployError, vm: Any, client: PveClient, what: str, gpu: bool = True) -> DeployError:
    """``err`` with ``what`` in front; ``gpu``: add what to check about the passthrough."""
    remedy = "\n  ".join(r for r in (err.remedy, gpu_checks(vm, client) if gpu else "") if r)
    return DeployError(what=f"{what}: {err.what}", cause=err.cause or str(err), remedy=remedy,
                       evidence=dict(err.evidence), command=err.command, exit_code=err.exit_code)


# -------------------------------------------------------------------------------- rollback

def _wait_for_vm_tasks(client: PveClient, node: str, vmid: int, timeout_s: float) -> None:
    """Wait (bounded) until no task of ``vmid`` runs: a stop would otherwise hit the config lock."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tasks = client.get(f"/nodes/{node}/tasks", vmid=vmid, source="active") or []
        if not [t for t in tasks if str(t.get("id")) == str(vmid) and not t.get("endtime")]:
            return
        time.sleep(1.0)


def rollback(client: PveClient, vmid: int) -> str:
    """Stop and destroy VM ``vmid`` that this run created; returns what happened (one line).
    Refuses (and says so) if the VM no longer carries our marker. Never raises."""
    try:
        live = read_live(client, vmid)
        if live is None:
            return f"rollback: VM {vmid} does not exist (PVE removed it with the failed task); nothing left behind"
        if not has_marker(live.config):
            return f"rollback: VM {vmid} has no managed marker any more; NOT destroyed - check it by hand"
        _wait_for_vm_tasks(client, live.node, vmid, ROLLBACK_WAIT_S)
        live = read_live(client, vmid) or live
        if live.running:
            stop_vm(client, vmid, node=live.node)
        upid = client.delete(vm_path(live.node, vmid), purge=1, **{"destroy-unreferenced-disks": 1})
        client.wait_task(str(upid), DESTROY_TIMEOUT_S, f"destroy of VM {vmid}")
        return f"rollback: VM {vmid} (created by this run) was stopped and destroyed with its disks"
    except DeployError as err:
        return (f"rollback FAILED ({redact(str(err).splitlines()[0])}); remove VM {vmid} by hand: "
                f"`qm stop {vmid}; qm destroy {vmid} --purge --destroy-unreferenced-disks`")


# ---------------------------------------------------------------------------------- create

def _create(client: PveClient, catalog: Any, vm: Any, params: dict[str, Any]) -> str:
    """POST the create; returns its UPID. A lost connection is never answered by a blind re-POST:
    look first (our VM with the marker = it was created, follow its task; no VM = the request did
    not arrive, send it once more; a VM without the marker = someone else's, stop)."""
    path = f"/nodes/{client.node}/qemu"
    for attempt in (1, 2):
        try:
            return str(client.post(path, vmid=vm.vmid, **params))
        except PveConnectionLost:
            log.warning("connection lost during the create of VM %s; checking what PVE did", vm.vmid)
        live = read_live(client, vm.vmid)
        if live is None:
            if attempt == 1:
                log.warning("VM %s does not exist: the create did not reach PVE; sending it once more", vm.vmid)
                continue
            raise DeployError(f"the create of VM {vm.vmid} did not reach PVE (connection lost twice)",
                              remedy="check the network path to the PVE API and run again")
        if not has_marker(live.config):
            raise DeployError(f"VMID {vm.vmid} appeared without our marker while creating it",
                              cause="another client created a VM with this id at the same time",
                              remedy="it is left untouched; pick another vmid or remove that VM yourself")
        return _create_task(client, live.node, vm.vmid)
    raise AssertionError("unreachable")


def _create_task(client: PveClient, node: str, vmid: int) -> str:
    """The UPID of the newest create task of ``vmid`` (``GET /nodes/{node}/tasks?vmid=``)."""
    tasks = client.get(f"/nodes/{node}/tasks", vmid=vmid) or []
    creates = sorted((t for t in tasks if t.get("type") == "qmcreate" and str(t.get("id")) == str(vmid)),
                     key=lambda t: -int(t.get("starttime") or 0))
    if not creates:
        raise DeployError(f"VM {vmid} exists but its create task cannot be found", cause="lost response",
                          remedy="look at the Tasks list in the PVE web UI")
    log.info("VM %s was created by our request (response lost); following task %s", vmid, creates[0]["upid"])
    return str(creates[0]["upid"])


def _create_and_start(client: PveClient, catalog: Any, vm: Any, results: list[OpResult]) -> None:
    params = desired_config(catalog, vm, raw_pci=raw_pci(client))
    start = time.monotonic()
    try:
        upid = _create(client, catalog, vm, params)
    except PveApiError as err:  # PVE refused before creating anything: nothing to roll back
        explained = _explain(err, vm, client, f"VM {vm.vmid} ({vm.name}) could not be created")
        explained.cause += f"\n  nothing was created (VMID {vm.vmid} is still free)"
        raise explained from None
    except KeyboardInterrupt:
        # The POST may have reached PVE: a VM with our marker now is this run's (pre-flight saw
        # the VMID free), and is removed like any other failure's.
        raise _interrupted(client, vm, results) from None
    # From here on the VM exists because of this run: any failure rolls it back.
    try:
        client.wait_task(upid, CREATE_TIMEOUT_S, f"create of VM {vm.vmid}", command=f"POST /nodes/{client.node}/qemu")
        results.append(OpResult(f"VM {vm.vmid} create", "changed", f"{vm.name} created", time.monotonic() - start))
        results.append(_timed(f"VM {vm.vmid} disk", lambda: _resize(client, vm)))
        px = catalog.proxmox
        results.append(_timed(f"VM {vm.vmid} start", lambda: (start_vm(client, vm.vmid, float(px.start_timeout_s),
                                                                        node=client.node), "started")[1]))
    except KeyboardInterrupt:
        raise _interrupted(client, vm, results) from None
    except Exception as err:  # noqa: BLE001 - whatever broke, undo what this run made
        outcome = _rollback_once(client, vm.vmid)
        if not isinstance(err, DeployError):
            err = DeployError(f"unexpected error: {type(err).__name__}", cause=redact(str(err)))
        explained = _explain(err, vm, client, f"VM {vm.vmid} ({vm.name}) could not be deployed")
        explained.cause = f"{explained.cause}\n  {outcome}"
        explained.evidence["rollback"] = outcome
        raise explained from None


def _rollback_once(client: PveClient, vmid: int) -> str:
    """:func:`rollback`, but a Ctrl-C during it ends it with a line saying what may be left."""
    try:
        return rollback(client, vmid)
    except KeyboardInterrupt:
        return (f"rollback interrupted: VM {vmid} may be left behind; check with `qm status {vmid}` and remove "
                f"it with `qm stop {vmid}; qm destroy {vmid} --purge --destroy-unreferenced-disks` (or run the "
                "destroy command)")


def _interrupted(client: PveClient, vm: Any, results: list[OpResult]) -> DeployError:
    """Ctrl-C while VM ``vm`` was being created/started: roll back what this run created and
    say so. A second Ctrl-C during the rollback stops it and says what may be left."""
    done = "; ".join(f"{r.name}: {r.reason}" for r in results if r.changed) or "nothing before the VM"
    outcome = _rollback_once(client, vm.vmid)
    return DeployError(f"interrupted (Ctrl-C) while deploying VM {vm.vmid} ({vm.name})",
                       cause=f"done before: {done}\n  {outcome}",
                       remedy="run the apply again when ready; it starts from what PVE has",
                       evidence={"rollback": outcome})


def _resize(client: PveClient, vm: Any) -> str:
    path = vm_path(client.node, vm.vmid) + "/resize"
    # An absolute size: the same request twice resizes once, so it may be repeated after a lost connection.
    client.run_task("PUT", path, RESIZE_TIMEOUT_S, f"resize of VM {vm.vmid} scsi0", idempotent=True, disk="scsi0",
                    size=f"{int(vm.disk.size_gib)}G")
    return f"scsi0 resized to {vm.disk.size_gib} GiB"


# -------------------------------------------------------------------------------- converge

def _update_value(key: str, desired: dict[str, Any], live: LiveVm) -> Any:
    if key == "tags":
        tags = split_tags(live.config.get("tags"))
        return ";".join(tags + [MARKER_TAG])
    if key == "description":
        return desired["description"] + "\n" + str(live.config.get("description") or "")
    return desired[key]


def _converge(client: PveClient, catalog: Any, vm: Any, live: LiveVm, changes: list[Change]) -> list[OpResult]:
    results: list[OpResult] = []
    desired = desired_config(catalog, vm, raw_pci=raw_pci(client))
    path = vm_path(live.node, vm.vmid)
    keys = [c for c in changes if c.field in desired and c.field != "scsi0"
            and not (c.action == "needs-restart" and c.reason.startswith("pending"))]
    if keys:
        start = time.monotonic()
        client.put(path + "/config", idempotent=True, **{c.field: _update_value(c.field, desired, live) for c in keys})
        for c in keys:
            reason = f"{c.current!r} -> {c.desired!r}"
            if c.action == "needs-restart":
                reason += " (pending: takes effect at the next VM start; restart the VM when convenient)"
            results.append(OpResult(f"VM {vm.vmid} {c.field}", "changed", reason, time.monotonic() - start))
    if any(c.field == "scsi0" and c.action == "update" for c in changes):
        results.append(_timed(f"VM {vm.vmid} disk", lambda: _resize(client, vm)))
    if any(c.field == "status" for c in changes):
        results.append(_timed(f"VM {vm.vmid} start", lambda: (start_vm(
            client, vm.vmid, float(catalog.proxmox.start_timeout_s), node=live.node), "started")[1]))
    if not results:
        results.append(OpResult(f"VM {vm.vmid}", "ok", "matches the catalog"))
    return results


# ----------------------------------------------------------------------------------- entry

def _stop_on_errors(vm: Any, findings: list[Finding]) -> None:
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        conflict = any(f.message.startswith("conflict") for f in errors)
        raise DeployError(
            f"{'conflict' if conflict else 'pre-flight checks failed'} for VM {vm.vmid} ({vm.name}); nothing was changed",
            cause="\n    ".join(f.message for f in errors),
            remedy="\n    ".join(f.remedy for f in errors if f.remedy),
            evidence={"pre-flight": "\n".join(str(f) for f in findings)})


def apply_vm(client: PveClient, catalog: Any, vm: Any) -> list[OpResult]:
    """Make PVE match catalog VM ``vm``: returns one OpResult per operation (``changed``/``ok``).

    Raises DeployError: pre-flight errors or a refused plan (nothing changed); a failed step
    (after a rollback of what this run created; the message quotes PVE and says what to check).
    """
    findings = preflight(client, catalog, vm)
    _stop_on_errors(vm, findings)
    live = read_live(client, vm.vmid)
    changes = diff_plan(catalog, vm, live, raw=raw_pci(client))
    refused = [c for c in changes if c.action == "refuse"]
    if refused:
        raise DeployError(f"refusing to change VM {vm.vmid} ({vm.name}); nothing was changed",
                          cause="\n    ".join(str(c) for c in refused),
                          remedy="these changes need a human: recreate the VM or edit the catalog to match")
    if live is None:
        results = [ensure_image(client, catalog, vm), ensure_mapping(client, vm)]
        _create_and_start(client, catalog, vm, results)
        return results
    try:
        return _converge(client, catalog, vm, live, changes)
    except KeyboardInterrupt:
        raise DeployError(f"interrupted (Ctrl-C) while updating VM {vm.vmid} ({vm.name})",
                          cause="the VM existed before this run, so nothing is rolled back; what was written so far "
                                "stays, and a PVE task of it (a resize or start) may still be running",
                          remedy=f"`python -m provisioners plan` shows what is left; PVE's Tasks list shows "
                                 f"running tasks of VM {vm.vmid}") from None
    except (PveTaskFailed, PveTaskTimeout, PveApiError) as err:
        raise _explain(err, vm, client, f"VM {vm.vmid} ({vm.name}) could not be updated",
                       gpu="start" in err.what) from None
