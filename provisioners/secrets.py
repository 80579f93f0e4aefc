"""Secret loading: environment first, then a private KEY=VALUE file.

Secrets never live in the catalog. The deployer reads them by name with :func:`get_secret`:

1. the environment variable of that name (a non-empty value), else
2. the file named by ``DEPLOYER_SECRETS_FILE``: ``KEY=VALUE`` lines (``#`` comments, blank
   lines, an optional ``export`` prefix and one pair of surrounding quotes are allowed). The file
   must not be readable or writable by group or others (mode 0600 or 0400), like ssh's
   ``~/.ssh/id_*`` files; anything else is refused.

Every value returned is registered with :func:`provisioners.redact.register_secret`, so it is
masked in everything the tool prints or writes.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from provisioners.errors import DeployError
from provisioners.redact import register_secret

#: The secrets the deployer knows: PVE API token secret (with ``PROXMOX_TOKEN_ID`` =
#: ``USER@REALM!TOKENID``, which is not secret), root@pam password, vLLM ``--api-key``,
#: Hugging Face token.
KNOWN_SECRETS: tuple[str, ...] = ("PROXMOX_TOKEN_SECRET", "PROXMOX_PASSWORD", "VLLM_API_KEY", "HF_TOKEN")

#: Environment variable naming the secrets file.
SECRETS_FILE_ENV = "DEPLOYER_SECRETS_FILE"


def get_secret(name: str) -> str | None:
    """The value of secret ``name`` from the environment or the secrets file, else None.

    Raises:
        DeployError: ``DEPLOYER_SECRETS_FILE`` is set but the file is missing, unreadable,
            malformed, or readable/writable by group or others (the message names the file, its
            mode and ``chmod 600``).
    """
    value = os.environ.get(name)
    if not value:
        value = read_secrets_file().get(name) or None
    if value:
        register_secret(value)
    return value


def require_secret(name: str, purpose: str) -> str:
    """Like :func:`get_secret`, but a missing secret is a :class:`DeployError` that says what
    needs it (``purpose``, e.g. ``"the PVE API token login"``) and how to provide it."""
    value = get_secret(name)
    if value is None:
        raise DeployError(f"secret {name} is not set",
                          cause=f"{purpose} needs it",
                          remedy=f"export {name}=... or put {name}=... in a 0600 file named by {SECRETS_FILE_ENV}")
    return value


def register_env_secrets() -> list[str]:
    """Register every known secret that is available (environment or secrets file) with the
    redactor; returns the names found (never the values). Call once at start-up so that
    secrets are masked even in output produced before they are used.

    Raises:
        DeployError: as :func:`get_secret`.
    """
    return [name for name in KNOWN_SECRETS if get_secret(name) is not None]


def read_secrets_file() -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of the file named by ``DEPLOYER_SECRETS_FILE`` ({} when unset).

    Raises:
        DeployError: missing/unreadable file, group/other permission bits set, or a line
            that is not ``KEY=VALUE`` (reported by line number, never by content).
    """
    name = os.environ.get(SECRETS_FILE_ENV)
    if not name:
        return {}
    path = Path(name).expanduser()
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DeployError(f"secrets file {path} does not exist",
                          cause=f"{SECRETS_FILE_ENV} names it",
                          remedy=f"create it (KEY=VALUE lines, chmod 600) or unset {SECRETS_FILE_ENV}") from None
    except OSError as err:
        raise DeployError(f"secrets file {path} cannot be read", cause=err.strerror or str(err)) from None
    if not stat.S_ISREG(info.st_mode):
        raise DeployError(f"secrets file {path} is not a regular file", remedy=f"point {SECRETS_FILE_ENV} at a file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise DeployError(f"secrets file {path} has mode {mode:04o}; it must be private (0600)",
                          cause="group or others may read or change it",
                          remedy=f"chmod 600 {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DeployError(f"secrets file {path} cannot be read", cause=str(err)) from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            # Never quote the line: it may hold a secret.
            raise DeployError(f"secrets file {path} line {number} is not KEY=VALUE",
                              remedy="write one KEY=VALUE per line, e.g. VLLM_API_KEY=...")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
        register_secret(value)
    return values
