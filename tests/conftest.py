"""Shared pytest fixtures: a started GpuFakePve on loopback (verified TLS with its own CA), the
lab catalog pointed at it, logged-in clients, and the request-log helper.

Fixtures
- ``pve_pki`` (session): (certfile, keyfile) of a self-signed certificate for 127.0.0.1.
- ``pve_ca``: the CA file clients verify the fake with.
- ``gpupve``: a started :class:`lab.gpupve.GpuFakePve` (``time_scale`` 0), profile ``rtx5060ti``;
  choose another with ``@pytest.mark.gpu_profile("no-gpu")``. ``gpupve_served`` is its
  :class:`lab.gpupve.ServedPve` (``.call(coro)`` runs a fake coroutine on its loop).
- ``lab_catalog``: ``lab/lab-catalog.yml`` loaded with the endpoint, CA and SSH key files of this
  test (the real ``.lab/`` files are not needed).
- ``lab_image``: the catalog's cloud image stored in the fake's ``local`` storage.
- ``pve_root`` / ``pve_token``: clients logged in as root@pam (password) / ``deployer@pve!ci`` (API token).
- ``fast_retry``: a :class:`provisioners.proxmox.RetryPolicy` with millisecond waits.
- ``writes(pve, since=0)``: the (method, path) of every POST/PUT/DELETE the fake saw after request
  number ``since`` (ticket logins excluded) - ``assert writes(pve, n) == []`` proves "read-only".
"""
from __future__ import annotations

from pathlib import Path

import pytest

from lab.gpupve import GpuFakePve, ServedPve
from provisioners.proxmox import Credentials, RetryPolicy, connect

REPO = Path(__file__).resolve().parents[1]
LAB_CATALOG = REPO / "lab" / "lab-catalog.yml"
TOKEN_ID = "deployer@pve!ci"
TOKEN_SECRET = "0b5e3c1e-5d2c-4b43-9d1e-6f7a3e2d1c0b"
ROOT_PASSWORD = "secret"
# A throwaway public key (not a secret); the fake only stores it.
SSH_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC4v5qS2o0QHnI0Jk9M9+7cA8w0s1d2e3f4g5h6i7j8k lab@test"


def writes(pve, since: int = 0) -> list[tuple[str, str]]:
    """(method, path) of the state-changing requests ``pve`` received after request ``since``."""
    return [(m, p) for m, p, _body in pve.requests[since:]
            if m in ("POST", "PUT", "DELETE") and not p.endswith("/access/ticket")]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu_profile(name): GPU profile of the gpupve fixture (default rtx5060ti)")


@pytest.fixture(scope="session")
def pve_pki(tmp_path_factory):
    from fakepve.certs import make_cert
    return make_cert(str(tmp_path_factory.mktemp("gpupve-pki")), hosts=("127.0.0.1",))[:2]


@pytest.fixture
def pve_ca(pve_pki) -> str:
    return pve_pki[0]


@pytest.fixture
def gpupve_served(request, pve_pki):
    marker = request.node.get_closest_marker("gpu_profile")
    profile = marker.args[0] if marker else "rtx5060ti"
    pve = GpuFakePve(profile=profile, user="root@pam", password=ROOT_PASSWORD, host="127.0.0.1", port=0)
    pve.time_scale = 0
    pve.apitokens[TOKEN_ID] = TOKEN_SECRET
    served = ServedPve(pve, *pve_pki)
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def gpupve(gpupve_served) -> GpuFakePve:
    return gpupve_served.pve


@pytest.fixture
def lab_catalog(gpupve, pve_ca, tmp_path):
    from provisioners.catalog import load_catalog
    pub = tmp_path / "id_ed25519.pub"
    pub.write_text(SSH_PUB + "\n")
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key\n")
    key.chmod(0o600)
    text = LAB_CATALOG.read_text()
    for old, new in (("https://127.0.0.1:17006", gpupve.url), ("../.lab/pve/ca.pem", pve_ca),
                     ("../.lab/ssh/id_ed25519.pub", str(pub)), ("../.lab/ssh/id_ed25519", str(key))):
        assert old in text, f"lab/lab-catalog.yml no longer contains {old!r}: update tests/conftest.py"
        text = text.replace(old, new)
    path = tmp_path / "lab-catalog.yml"
    path.write_text(text)
    return load_catalog(path)


@pytest.fixture
def lab_image(gpupve, lab_catalog) -> str:
    volid = lab_catalog.images["lab-debian-12"].cloud_image.volid
    storage, _, name = volid.partition(":")
    gpupve.store_file(storage, name.split("/", 1)[1], 512 * 1024 ** 2, content="import")
    return volid


@pytest.fixture
def fast_retry() -> RetryPolicy:
    return RetryPolicy(attempts=6, initial_s=0.01, max_s=0.05, lock_attempts=3, lock_initial_s=0.01,
                       poll_initial_s=0.01, poll_max_s=0.05)


@pytest.fixture
def pve_root(lab_catalog, fast_retry):
    return connect(lab_catalog, credentials=Credentials("root@pam", password=ROOT_PASSWORD), retry=fast_retry)


@pytest.fixture
def pve_token(lab_catalog, fast_retry):
    user, _, name = TOKEN_ID.partition("!")
    return connect(lab_catalog, credentials=Credentials(user, token_name=name, token_secret=TOKEN_SECRET),
                   retry=fast_retry)
