"""NoCloud seed generated from a VM's PVE cloud-init settings, the way Proxmox VE does it.

PVE renders the seed in ``PVE::QemuServer::Cloudinit`` (pve-qemu-server, ``nocloud`` format):
``cloudinit_userdata`` (hostname, ``manage_etc_hosts: true``, fqdn, ``user: <ciuser>``, password,
the URL-decoded ``sshkeys`` one per line, ``chpasswd: expire: False``, ``users: [default]``,
``package_upgrade`` unless ``ciupgrade=0``), ``nocloud_network`` (network-config version 1, one
``physical`` entry per ``ipconfigN`` with the MAC of ``netN``, then a ``nameserver`` entry) and a
meta-data with an ``instance-id`` that changes when the rendered config changes.

The lab renders the same keys, so the product's VM settings reach the guest exactly as they would
on a real PVE host. ``users: [default]`` + ``user: <ciuser>`` gives the ciuser the default user's
passwordless sudo (``system_info.default_user.sudo`` in Debian's ``/etc/cloud/cloud.cfg``), as on
PVE with a Debian/Ubuntu cloud image.

Shapes: :func:`render` takes the PVE config dict (``GET /nodes/{n}/qemu/{vmid}/config`` keys,
values as PVE returns them) and returns ``Seed(user_data, meta_data, network_config)`` (strings);
:func:`write_iso` writes a ``cidata`` ISO9660 volume (``cloud-localds`` or ``genisoimage``).
"""
from __future__ import annotations

import hashlib
import ipaddress
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import yaml

from lab import state
from provisioners.errors import DeployError


@dataclass(frozen=True)
class Seed:
    """The three NoCloud files (text)."""

    user_data: str
    meta_data: str
    network_config: str


def hostname_fqdn(config: dict, vmid: int) -> tuple[str, str]:
    """(hostname, fqdn) as PVE's ``get_hostname_fqdn``: ``name`` (default ``VM<vmid>``); a dotted
    name is the fqdn; otherwise ``name.searchdomain`` when a searchdomain is set."""
    hostname = str(config.get("name") or f"VM{vmid}")
    if "." in hostname:
        return hostname.split(".", 1)[0], hostname
    search = config.get("searchdomain")
    return hostname, f"{hostname}.{search}" if search else hostname


def decode_sshkeys(value: str | None) -> list[str]:
    """PVE stores ``sshkeys`` URL-encoded (``quote(keys, safe="")``); one key per non-blank line."""
    if not value:
        return []
    return [line.strip() for line in unquote(str(value)).split("\n") if line.strip()]


def _truthy(value, default: bool) -> bool:
    if value is None:
        return default
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def user_data(config: dict, vmid: int) -> str:
    """``#cloud-config`` user-data like ``cloudinit_userdata`` (PVE 8/9)."""
    hostname, fqdn = hostname_fqdn(config, vmid)
    doc: dict = {"hostname": hostname, "manage_etc_hosts": True, "fqdn": fqdn}
    user = config.get("ciuser")
    if user:
        doc["user"] = str(user)
        if user == "root":
            doc["disable_root"] = False
    if config.get("cipassword"):
        doc["password"] = str(config["cipassword"])
    keys = decode_sshkeys(config.get("sshkeys"))
    if "sshkeys" in config:
        doc["ssh_authorized_keys"] = keys
    doc["chpasswd"] = {"expire": False}
    if user != "root":
        doc["users"] = ["default"]
    if _truthy(config.get("ciupgrade"), default=True):
        doc["package_upgrade"] = True
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def _parse_props(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in str(value).split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _mac_of(netval: str | None) -> str | None:
    """MAC of a PVE ``netN`` value such as ``virtio=BC:24:11:00:00:01,bridge=vmbr0``."""
    if not netval:
        return None
    for part in str(netval).split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            if k in ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3", "macaddr"):
                return v.lower()
    return None


def _subnets(ipconfig: dict[str, str], index: int) -> list[dict]:
    subnets: list[dict] = []
    ip = ipconfig.get("ip")
    if ip == "dhcp":
        subnets.append({"type": "dhcp4"})
    elif ip:
        try:
            iface = ipaddress.ip_interface(ip)
        except ValueError:
            raise DeployError(
                what=f"ipconfig{index} has an invalid ip {ip!r}",
                cause="PVE expects ip=<IPv4>/<prefix>, dhcp, or nothing",
                remedy="fix the VM's ipconfig in the catalog, e.g. ip=10.0.2.15/24,gw=10.0.2.2",
            ) from None
        sub = {"type": "static", "address": str(iface.ip), "netmask": str(iface.netmask)}
        if ipconfig.get("gw"):
            sub["gateway"] = ipconfig["gw"]
        subnets.append(sub)
    ip6 = ipconfig.get("ip6")
    if ip6 == "dhcp":
        subnets.append({"type": "dhcp6"})
    elif ip6 == "auto":
        subnets.append({"type": "ipv6_slaac"})
    elif ip6:
        sub6 = {"type": "static6", "address": ip6}
        if ipconfig.get("gw6"):
            sub6["gateway"] = ipconfig["gw6"]
        subnets.append(sub6)
    return subnets


def network_config(config: dict, *, default_dns: str | None = state.GUEST_DNS) -> str:
    """network-config version 1 like PVE's ``nocloud_network``: one ``physical`` ``ethN`` per
    ``ipconfigN`` (matched by the MAC of ``netN``), then the ``nameserver`` entry.

    PVE falls back to the host's resolv.conf when ``nameserver`` is unset; the lab's "host" is
    qemu's user-mode network, whose resolver is ``default_dns`` (10.0.2.3).
    """
    entries: list[dict] = []
    for key in sorted((k for k in config if k.startswith("ipconfig") and k[8:].isdigit()),
                      key=lambda k: int(k[8:])):
        n = int(key[8:])
        ent: dict = {"type": "physical", "name": f"eth{n}"}
        mac = _mac_of(config.get(f"net{n}"))
        if mac:
            ent["mac_address"] = mac
        ent["subnets"] = _subnets(_parse_props(config[key]), n)
        entries.append(ent)
    dns = str(config.get("nameserver") or default_dns or "").split()
    search = str(config.get("searchdomain") or "").split()
    if dns or search:
        ns: dict = {"type": "nameserver"}
        if dns:
            ns["address"] = dns
        if search:
            ns["search"] = search
        entries.append(ns)
    return yaml.safe_dump({"version": 1, "config": entries}, sort_keys=False)


def render(config: dict, vmid: int) -> Seed:
    """The NoCloud seed for a VM config (``GET .../qemu/{vmid}/config`` dict).

    meta-data's ``instance-id`` is a sha1 of the rendered user-data + network-config (PVE does the
    same), so changed settings make cloud-init treat the next boot as a new instance.
    Raises DeployError on an unparsable ``ipconfigN``.
    """
    ud = user_data(config, vmid)
    nc = network_config(config)
    iid = hashlib.sha1((ud + nc).encode()).hexdigest()
    hostname, _ = hostname_fqdn(config, vmid)
    md = f"instance-id: {iid}\nlocal-hostname: {hostname}\n"
    return Seed(user_data=ud, meta_data=md, network_config=nc)


def write_iso(seed: Seed, dest: Path) -> Path:
    """Write the seed as an ISO9660 volume labelled ``cidata`` (NoCloud's label) to ``dest``.

    Uses ``cloud-localds`` (cloud-image-utils) when present, else ``genisoimage``.
    Raises DeployError when neither tool exists or the tool fails.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cidata-") as tmp:
        t = Path(tmp)
        (t / "user-data").write_text(seed.user_data)
        (t / "meta-data").write_text(seed.meta_data)
        (t / "network-config").write_text(seed.network_config)
        if shutil.which("cloud-localds"):
            cmd = ["cloud-localds", f"--network-config={t / 'network-config'}", str(dest) + ".tmp",
                   str(t / "user-data"), str(t / "meta-data")]
        elif shutil.which("genisoimage"):
            cmd = ["genisoimage", "-quiet", "-output", str(dest) + ".tmp", "-volid", "cidata",
                   "-joliet", "-rock", str(t / "user-data"), str(t / "meta-data"),
                   str(t / "network-config")]
        else:
            raise DeployError(
                what="cannot write the lab guest's cloud-init seed",
                cause="neither cloud-localds nor genisoimage is installed",
                remedy="apt-get install cloud-image-utils genisoimage",
            )
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DeployError(
                what="cannot write the lab guest's cloud-init seed",
                cause=(proc.stderr or proc.stdout).strip()[-2000:],
                remedy="check the tool's output above and free space in the lab state directory",
                command=" ".join(cmd[:1]), exit_code=proc.returncode,
            )
    Path(str(dest) + ".tmp").replace(dest)
    return dest
