"""The PVE config a catalog VM should have, the managed marker, and comparing it with a live config.

Settings and their reasons (``../shared/DESIGN.md`` §3, PVE ``qm.conf(5)`` / ``/nodes/{node}/qemu`` API):
``machine=q35`` (PCIe passthrough needs it), ``bios=ovmf`` with an ``efidisk0`` without
pre-enrolled keys (no Secure Boot: the NVIDIA DKMS modules are unsigned), ``balloon=0`` (vfio pins
all guest memory), ``cpu=host``, ``scsihw=virtio-scsi-single``, ``scsi0`` imported from the
cloud image (``import-from``, size 0 = the image's size, then resized), a cloud-init drive with
``sshkeys`` URL-encoded by ``quote(keys, safe="")`` (PVE rejects ``+``), and ``hostpci0`` as
``mapping=<id>`` (API tokens) or ``host=<address>`` (root@pam password login only).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

from provisioners.errors import DeployError

#: The managed marker: this tag in ``tags`` AND this line in ``description``.
MARKER_TAG = "gpu-llm-deployer"
MARKER_LINE = "managed-by: gpu-llm-deployer"

GiB = 1024 ** 3
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": GiB, "T": 1024 ** 4}

#: How a difference is carried out. ``live``: PVE applies it at once; ``restart``: written now,
#: effective after the next VM start (PVE keeps it pending on a running VM; cloud-init is
#: regenerated at start); ``fixed``: cannot be changed in place (refused); ``disk``: resize.
Kind = Literal["live", "restart", "fixed", "disk"]


@dataclass(frozen=True)
class Difference:
    """One key whose live value differs from the desired one. ``current``/``desired`` are as
    PVE spells them (``current`` None = absent)."""

    key: str
    current: Any
    desired: Any
    kind: Kind
    note: str = ""


def split_tags(value: Any) -> list[str]:
    """PVE ``tags``: separated by ``;`` (also ``,`` or spaces on input)."""
    return [t for t in re.split(r"[;,\s]+", str(value or "")) if t]


def has_marker(config: dict[str, Any] | None) -> bool:
    """True if a VM config carries our managed marker (tag and description line)."""
    if not config:
        return False
    lines = [line.strip() for line in str(config.get("description") or "").splitlines()]
    return MARKER_TAG in [t.lower() for t in split_tags(config.get("tags"))] and MARKER_LINE in lines


def read_public_keys(vm: Any) -> str:
    """The SSH public key text of ``vm.cloud_init.ssh_public_key_file`` (stripped).
    Raises DeployError if it cannot be read or is not an OpenSSH public key."""
    path = Path(str(vm.cloud_init.ssh_public_key_file)).expanduser()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise DeployError(f"cannot read the SSH public key of VM {vm.vmid}", cause=f"{path}: {err.strerror or err}",
                          remedy="point cloud_init.ssh_public_key_file at an OpenSSH *.pub file "
                                 "(ssh-keygen -t ed25519 makes one)") from None
    if not text or not re.match(r"^(ssh-|ecdsa-|sk-)", text):
        raise DeployError(f"not an SSH public key: {path}", cause="expected a line such as 'ssh-ed25519 AAAA... comment'",
                          remedy="point cloud_init.ssh_public_key_file at the *.pub file, not the private key")
    return text


def hostpci_value(vm: Any, raw: bool) -> str:
    """``hostpci0`` for the VM: ``mapping=<id>`` unless ``raw`` (root@pam password login) or no
    mapping is configured, then ``host=<address>``; ``,pcie=1`` when ``gpu.pcie``."""
    gpu = vm.gpu
    value = f"host={gpu.address}" if raw or not gpu.mapping else f"mapping={gpu.mapping}"
    return value + (",pcie=1" if gpu.pcie else "")


def image_volid(catalog: Any, vm: Any) -> str:
    """The volume ID of the VM's cloud image (``images.<name>.cloud_image.volid``)."""
    return str(catalog.images[vm.image].cloud_image.volid)


def desired_config(catalog: Any, vm: Any, *, raw_pci: bool) -> dict[str, Any]:
    """The parameters of ``POST /nodes/{node}/qemu`` for ``vm`` (without ``vmid``).

    ``memory`` is MiB (PVE's unit), ``scsi0``'s size is set afterwards by a resize to
    ``disk.size_gib`` GiB. ``raw_pci``: see :func:`hostpci_value`.
    Raises DeployError if the SSH public key cannot be read.
    """
    net = catalog.network
    disk = vm.disk
    return {
        "name": vm.name,
        "ostype": "l26",
        "machine": "q35",
        "bios": "ovmf",
        "efidisk0": f"{vm.efidisk_storage}:1,efitype=4m,pre-enrolled-keys=0",
        "cpu": "host",
        "cores": int(vm.cores),
        "memory": int(vm.memory_mib),
        "balloon": 0,
        "scsihw": "virtio-scsi-single",
        "scsi0": f"{disk.storage}:0,import-from={image_volid(catalog, vm)}",
        "ide2": f"{disk.storage}:cloudinit",
        "boot": "order=scsi0",
        "ciuser": vm.cloud_init.user,
        "sshkeys": quote(read_public_keys(vm), safe=""),
        # PVE >= 8.1 defaults ciupgrade to 1; say it explicitly so the plan compares what we chose.
        "ciupgrade": 1 if vm.cloud_init.package_upgrade else 0,
        "ipconfig0": f"ip={vm.ip_address}/{vm.prefixlen},gw={net.gateway}",
        "nameserver": " ".join(str(d) for d in net.dns),
        "net0": f"virtio,bridge={net.bridge}",
        "hostpci0": hostpci_value(vm, raw_pci),
        "agent": 1,
        "onboot": 1,
        "tags": MARKER_TAG,
        "description": f"{MARKER_LINE}\ncatalog VM: {vm.name}",
    }


# ----------------------------------------------------------------------- comparison

def props(value: Any) -> tuple[str, dict[str, str]]:
    """(first bare item, {key: value}) of a PVE property string such as ``local-lvm:vm-140-disk-0,size=8G``."""
    first, out = "", {}
    for n, part in enumerate(str(value or "").split(",")):
        key, eq, val = part.partition("=")
        if eq:
            out[key] = val
        elif n == 0:
            first = key
    return first, out


def size_bytes(text: str | None) -> int:
    """PVE's ``size=`` (``8G``, ``528K``, bytes) in bytes; 0 if absent or unreadable."""
    m = re.match(r"^(\d+(?:\.\d+)?)([KMGT]?)$", str(text or ""))
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0


def _storage(volume: str) -> str:
    return volume.split(":", 1)[0] if ":" in volume else ""


def _net(value: Any) -> tuple[str, str]:
    first, p = props(value)
    model = first.split("=", 1)[0] if first else p.get("model", "")
    for name in ("virtio", "e1000", "vmxnet3", "rtl8139"):
        if name in p:
            model = name
    return model, p.get("bridge", "")


def _hostpci(value: Any) -> tuple[str, str, str]:
    first, p = props(value)
    return p.get("mapping", ""), p.get("host", first), p.get("pcie", "0")


def _flag(value: Any) -> str:
    first, p = props(value)
    return p.get("enabled", first) or "0"


def compare(desired: dict[str, Any], live: dict[str, Any], size_gib: int) -> list[Difference]:
    """Differences between ``desired`` (from :func:`desired_config`) and a live PVE config
    (``GET /nodes/{node}/qemu/{vmid}/config``, pending values merged by the caller).

    Volumes are compared by storage (and EFI options), ``scsi0`` by size against ``size_gib``
    GiB, tags/description by the marker only, ``sshkeys`` after URL-decoding.
    """
    out: list[Difference] = []

    def diff(key: str, kind: Kind, same: bool, note: str = "") -> None:
        if not same:
            out.append(Difference(key, live.get(key), desired.get(key), kind, note))

    for key in ("name",):
        diff(key, "live", str(live.get(key, "")) == str(desired[key]))
    for key in ("onboot", "agent"):
        diff(key, "live", _flag(live.get(key, "0")) == str(desired[key]))
    diff("ciupgrade", "live", _flag(live.get("ciupgrade", "1")) == str(desired["ciupgrade"]),
         "cloud-init reads it at the first boot only")
    diff("tags", "live", MARKER_TAG in [t.lower() for t in split_tags(live.get("tags"))])
    diff("description", "live", MARKER_LINE in str(live.get("description", "")).splitlines())
    for key in ("machine", "bios", "cpu", "scsihw", "ostype"):
        diff(key, "restart", str(live.get(key, "")) == str(desired[key]))
    for key in ("cores", "memory", "balloon"):
        diff(key, "restart", str(live.get(key, "")) == str(desired[key]))
    diff("net0", "restart", _net(live.get("net0")) == _net(desired["net0"]))
    diff("hostpci0", "restart", _hostpci(live.get("hostpci0")) == _hostpci(desired["hostpci0"]))
    for key in ("ciuser", "ipconfig0", "nameserver"):
        diff(key, "restart", str(live.get(key, "")) == str(desired[key]), "cloud-init applies it at the next start")
    diff("sshkeys", "restart", unquote(str(live.get("sshkeys", ""))).strip() == unquote(desired["sshkeys"]).strip(),
         "cloud-init applies it at the next start")

    vol, p = props(live.get("efidisk0"))
    want_vol, want = props(desired["efidisk0"])
    diff("efidisk0", "fixed", bool(vol) and _storage(vol) == _storage(want_vol)
         and p.get("efitype") == want["efitype"] and p.get("pre-enrolled-keys", "1") == want["pre-enrolled-keys"],
         "the EFI disk cannot be changed in place")
    vol, p = props(live.get("ide2"))
    # PVE names it vm-<id>-cloudinit; any CD-ROM volume on the storage counts (fakepve names it vm-<id>-disk-N).
    diff("ide2", "fixed", bool(vol) and _storage(vol) == _storage(props(desired["ide2"])[0])
         and ("cloudinit" in vol or p.get("media") == "cdrom"),
         "the cloud-init drive cannot be moved in place")
    vol, p = props(live.get("scsi0"))
    want_storage = _storage(props(desired["scsi0"])[0])
    if not vol or _storage(vol) != want_storage:
        out.append(Difference("scsi0", live.get("scsi0"), f"{want_storage}, {size_gib} GiB", "fixed",
                              "moving the boot disk to another storage is not done by this tool"))
    else:
        have = size_bytes(p.get("size"))
        if have != size_gib * GiB:
            out.append(Difference("scsi0", f"{have / GiB:g} GiB", f"{size_gib} GiB", "disk",
                                  "shrink" if have > size_gib * GiB else "grow"))
    return out
