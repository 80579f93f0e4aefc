"""The running lab: LabPve (https) + the artefact server + the guest watcher, in one process.

``python -m lab up`` starts :func:`serve` in a background session (``setsid``) with its log in
``.lab/lab.log`` and pid in ``.lab/lab.pid``; it holds ``flock(.lab/lock)`` for its whole life.
Once every endpoint answers it writes ``.lab/ready.json``::

    {"pid": int, "pve_url": "https://127.0.0.1:17006", "pve_user": "root@pam",
     "pve_ca": ".../.lab/pve/ca.pem", "ports": {"pve":..,"ssh":..,"artefacts":..,"vllm":..,
     "ollama":..}, "artefacts": bool, "profile": str, "image": {"qcow2", "sha256", "volid"},
     "ssh_key": ".../.lab/ssh/id_ed25519", "vms": [...]}   # vms refreshed every second

SIGTERM / SIGINT (Ctrl-C) stop the guests, the servers and remove the pid/ready files; qemu also
dies with this process on SIGKILL (``PR_SET_PDEATHSIG``), and ``lab down`` checks qemu pidfiles.

TLS: a lab CA (``.lab/pve/ca.pem``, EC P-256, 10 years, made once) signs a fresh server
certificate for 127.0.0.1/localhost at each start; clients verify with ``verify=.lab/pve/ca.pem``.
"""
from __future__ import annotations

import asyncio
import atexit
import datetime
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lab import state
from provisioners.errors import DeployError
from provisioners.redact import RedactingFilter, redact, register_secret

log = logging.getLogger("lab.server")
DEFAULT_PASSWORD = "lab-secret"
DEFAULT_PROFILE = "rtx5060ti"
PVE_USER = "root@pam"


def pve_password() -> str:
    """root@pam's password: env ``LAB_PVE_PASSWORD`` (default ``lab-secret``, a public lab default)."""
    value = os.environ.get("LAB_PVE_PASSWORD") or DEFAULT_PASSWORD
    if value != DEFAULT_PASSWORD:
        register_secret(value)
    return value


# ------------------------------------------------------------------ files made once
def ensure_ssh_key(paths: state.LabPaths) -> Path:
    """``.lab/ssh/id_ed25519`` (OpenSSH private key, mode 0600) + ``.pub``; made once, kept."""
    key = paths.ssh_key
    pub = key.with_name(key.name + ".pub")
    if key.exists() and pub.exists():
        return key
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    paths.ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.ssh_dir, 0o700)
    priv = Ed25519PrivateKey.generate()
    data = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                              serialization.NoEncryption())
    fd = os.open(str(key) + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(str(key) + ".tmp", key)
    pub_line = priv.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH)
    pub.write_text(pub_line.decode() + " lab@gpu-llm-deployer\n")
    return key


def ensure_ca(paths: state.LabPaths) -> tuple[Path, Path]:
    """The lab CA (``.lab/pve/ca.pem`` + ``ca.key``), made once; returns (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_p, key_p = paths.pve_ca, paths.pve_dir / "ca.key"
    if cert_p.exists() and key_p.exists():
        return cert_p, key_p
    paths.pve_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpu-llm-deployer lab CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _write_pem(cert, cert_p, key, key_p)


def _write_pem(cert: Any, cert_p: Path, key: Any, key_p: Path) -> tuple[Path, Path]:
    """Write ``key`` (PEM, unencrypted, created 0600 so it is never readable by others) and
    ``cert`` (PEM); returns (``cert_p``, ``key_p``)."""
    from cryptography.hazmat.primitives import serialization

    fd = os.open(key_p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()))
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_p, key_p


def issue_server_cert(paths: state.LabPaths, host: str = state.LOOPBACK) -> tuple[Path, Path]:
    """A server certificate for ``host`` + localhost signed by the lab CA (30 days).
    Returns (``.lab/pve/pve.pem``, ``.lab/pve/pve.key``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert_p, ca_key_p = ensure_ca(paths)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_p.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_p.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if host not in ("127.0.0.1", "localhost"):
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fakepve lab")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_p, key_p = paths.pve_dir / "pve.pem", paths.pve_dir / "pve.key"
    return _write_pem(cert, cert_p, key, key_p)


# ------------------------------------------------------------------ profile
def current_profile(paths: state.LabPaths) -> str:
    """Name in ``.lab/profile`` (default ``rtx5060ti``)."""
    try:
        return paths.profile.read_text().strip() or DEFAULT_PROFILE
    except FileNotFoundError:
        return DEFAULT_PROFILE


def set_profile(paths: state.LabPaths, name: str) -> str:
    """Select GPU profile ``name``: writes ``.lab/profile`` and ``.lab/gpu-profile.json`` (the
    guest's fw_cfg file, read at the next qemu start). Raises DeployError for an unknown name."""
    from lab import profiles

    prof = profiles.get_profile(name)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.gpu_profile_json.write_text(prof.guest_hw_json())
    paths.profile.write_text(name + "\n")
    return name


# ------------------------------------------------------------------ artefacts (H5)
def _start_artefacts(paths: state.LabPaths, ports: state.Ports, profile: str, img):
    """Build + serve the artefacts (``lab.artefacts.build_all`` / ``lab.artefacts.server.start``)
    plus ``/images/lab-debian-12.qcow2`` (the base image, for the catalog's cloud image URL).
    Returns the handle (``.stop()``) or None with the reason logged when lab.artefacts is missing."""
    try:
        import lab.artefacts as artefacts
        from lab.artefacts import server as art_server
    except ImportError as exc:
        log.warning("artefact server not available (%s); the lab runs without it", exc)
        return None
    images = paths.root / "images"
    images.mkdir(parents=True, exist_ok=True)
    from lab.image import VOLUME_NAME
    link = images / VOLUME_NAME
    link.unlink(missing_ok=True)
    link.symlink_to(img.qcow2)
    (images / (VOLUME_NAME + ".sha256")).write_text(f"{img.sha256}  {VOLUME_NAME}\n")
    artefacts.build_all(paths.root, profile=profile, port=ports.artefacts)
    return art_server.start(paths.root, state.LOOPBACK, ports.artefacts, extra_dirs={"images": images})


def _apply_profile(pve, paths: state.LabPaths, ports: state.Ports, name: str, art) -> None:
    """Switch a running lab to GPU profile ``name``: PVE's PCI view, the guest's fw_cfg file
    (read at the next qemu start) and the artefacts."""
    from lab import profiles

    prof = profiles.get_profile(name)
    set_profile(paths, name)
    pve_prof = prof.pve_profile()
    if hasattr(pve, "pci_devices"):
        pve.profile = pve_prof["name"]
        pve.pci_devices = pve_prof["pci_devices"]
        pve.iommu = pve_prof["iommu"]
    if art is not None:
        import lab.artefacts as artefacts
        artefacts.build_all(paths.root, profile=name, port=ports.artefacts)


# ------------------------------------------------------------------ serve
def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


async def _serve(paths: state.LabPaths, ports: state.Ports, stop: asyncio.Event) -> None:
    from lab import image as image_mod
    from lab.hypervisor import LabPve

    img = image_mod.build()
    profile = current_profile(paths)
    set_profile(paths, profile)
    kwargs = {}
    try:
        from lab import profiles
        kwargs["profile"] = profiles.get_profile(profile).pve_profile()
    except (ImportError, AttributeError):
        pass
    ensure_ssh_key(paths)
    cert, key = issue_server_cert(paths)
    pve = LabPve(img, paths, ports, user=PVE_USER, password=pve_password(),
                 host=state.LOOPBACK, port=ports.pve, **kwargs)
    atexit.register(pve.shutdown_guests)
    art = None
    watcher = None
    try:
        loop = asyncio.get_running_loop()
        try:
            await pve.start(str(cert), str(key))
            art = await loop.run_in_executor(None, _start_artefacts, paths, ports, profile, img)
        except OSError as exc:
            raise DeployError(
                what="the lab cannot listen on its loopback ports",
                cause=str(exc),
                remedy=f"another lab or program uses one of {ports.as_dict()}; stop it, or pick "
                "other ports with LAB_PORT_BASE (e.g. LAB_PORT_BASE=18000)",
            ) from exc
        watcher = asyncio.ensure_future(pve.watch())
        info = {
            "pid": os.getpid(), "pve_url": f"https://{state.LOOPBACK}:{ports.pve}",
            "pve_user": PVE_USER, "pve_ca": str(paths.pve_ca), "ports": ports.as_dict(),
            "artefacts": art is not None, "profile": profile, "ssh_key": str(paths.ssh_key),
            "image": {"qcow2": str(img.qcow2), "sha256": img.sha256, "volid": image_mod.VOLUME_ID},
            "console_log": str(paths.console_log),
        }
        log.info("lab ready: %s", json.dumps(info))
        while not stop.is_set():
            wanted = current_profile(paths)
            if wanted != info["profile"]:
                try:
                    await loop.run_in_executor(None, _apply_profile, pve, paths, ports, wanted, art)
                    log.info("GPU profile now %s (the guest sees it from its next start)", wanted)
                except Exception as exc:  # noqa: BLE001 - keep the lab running on a bad switch
                    log.error("switching to GPU profile %s failed: %s", wanted, exc)
                info["profile"] = wanted
            _write_json(paths.ready, {**info, **pve.status()})
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
    finally:
        log.info("lab stopping")
        if watcher:
            watcher.cancel()
        await asyncio.get_running_loop().run_in_executor(None, pve.shutdown_guests)
        if art is not None:
            try:
                art.stop()
            except Exception:  # noqa: BLE001 - exit path
                log.exception("stopping the artefact server")
        await pve.stop()
        paths.ready.unlink(missing_ok=True)


def serve(paths: state.LabPaths | None = None, ports: state.Ports | None = None) -> int:
    """Run the lab in this process until SIGTERM/SIGINT. Returns the exit status.

    Holds the lab lock; raises DeployError when another lab holds it.
    """
    paths = paths or state.paths()
    ports = ports or state.ports()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    for h in logging.getLogger().handlers:
        h.addFilter(RedactingFilter())
    lock = state.LabLock(paths.lock).acquire()
    try:
        from lab.guest import kill_strays

        killed = kill_strays(paths)
        if killed:
            log.warning("killed stray lab qemu processes: %s", killed)
        # fakepve's state lives in memory: VMs of an earlier lab do not exist any more
        import shutil
        shutil.rmtree(paths.root / "vm", ignore_errors=True)
        if paths.console_log.exists():  # one lab run per console log; keep the previous one
            os.replace(paths.console_log, paths.console_log.with_name("guest-console.log.1"))
        paths.pidfile.write_text(f"{os.getpid()}\n")
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        try:
            loop.run_until_complete(_serve(paths, ports, stop))
        finally:
            loop.close()
        return 0
    except DeployError as err:
        log.error("%s", err)
        print(redact(str(err)), file=sys.stderr, flush=True)
        return 1
    finally:
        paths.pidfile.unlink(missing_ok=True)
        lock.release()
