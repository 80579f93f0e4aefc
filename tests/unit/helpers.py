"""Test helpers shared by several unit-test modules (import them; pytest fixtures included).

- :func:`command_args`: parse a ``provisioners.commands.*`` module's command line the way
  ``python -m provisioners`` does.
- :func:`token_env`: the PVE API token from the test fakes in ``PROXMOX_TOKEN_*``, every other
  credential variable removed, so the token is the only way in.
- :func:`guest`: a REAL SSH session into the throw-away sshd of test_remote whose PATH starts
  with a per-test ``bin`` directory for shims; yields ``(session, bindir)``. The requesting
  module must also import the ``sshd`` and ``store`` fixtures from :mod:`tests.unit.test_remote`.
"""
from __future__ import annotations

import argparse
from types import ModuleType

import pytest

from tests.conftest import TOKEN_ID, TOKEN_SECRET


def command_args(module: ModuleType, *argv: str) -> argparse.Namespace:
    """``argv`` parsed by the parser that ``module.add_arguments`` builds."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def token_env(monkeypatch):
    for name in ("DEPLOYER_SECRETS_FILE", "PROXMOX_PASSWORD", "PROXMOX_INSECURE", "PROXMOX_USER",
                 "PROXMOX_TOKEN_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROXMOX_TOKEN_ID", TOKEN_ID)
    monkeypatch.setenv("PROXMOX_TOKEN_SECRET", TOKEN_SECRET)


@pytest.fixture
def guest(sshd, store, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sshd.stop()
    sshd.extra_config = f"SetEnv PATH={bindir}:/usr/bin:/bin:/usr/sbin:/sbin\n"
    sshd.start()
    s = sshd.session(store)
    s.connect(wait_s=5)
    yield s, bindir
    s.close()
