"""Proxmox VE API client: authentication, TLS, timeouts, retries, and tasks that are really awaited.

Built on proxmoxer (https backend). What it adds, and why:

- proxmoxer's default HTTP timeout is 5 s, too short for a node under load; we use the catalog's
  ``proxmox.timeout_s`` (at least 30 s).
- TLS is verified by default (``proxmox.ca_file`` for a self-signed PVE CA,
  ``/etc/pve/pve-root-ca.pem`` on the node). Turning it off needs an explicit ``insecure`` flag
  and prints a warning.
- Reads (GET, task polls) are retried with exponential backoff on connection errors and
  timeouts (tenacity). Writes are never retried blindly: a write whose connection broke raises
  :class:`PveConnectionLost` and the caller looks at the state first (a create is checked for
  the VM and our marker before anything else). Writes PVE refused *before acting* (config lock
  timeout, an expired login ticket) are safe to repeat and are repeated.
- A ticket login (root@pam password) logs in again when PVE answers 401 (expired ticket).
- :meth:`PveClient.wait_task` polls ``GET /nodes/{node}/tasks/{upid}/status`` and checks
  ``exitstatus`` (``OK`` or ``WARNINGS: n`` = success; proxmoxer's own helper does not), and on
  failure reads ``GET /nodes/{node}/tasks/{upid}/log?limit=0`` and raises :class:`PveTaskFailed`
  quoting it.

Environment (credentials never live in the catalog): ``PROXMOX_USER`` (``root@pam``,
``deployer@pve``), then either ``PROXMOX_TOKEN_NAME`` + secret ``PROXMOX_TOKEN_SECRET`` (API token)
or secret ``PROXMOX_PASSWORD`` (ticket login); ``PROXMOX_INSECURE=1`` = ``--insecure``.
Secrets are read through :func:`provisioners.secrets.get_secret` (registered for redaction).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.core import AuthenticationError, ResourceException
from tenacity import (RetryError, Retrying, retry_if_exception_type, retry_if_result, stop_after_attempt,
                      stop_after_delay, wait_exponential)

from provisioners.errors import DeployError
from provisioners.redact import redact, register_secret

log = logging.getLogger(__name__)

#: Seconds; PVE API calls on a busy node can take well over proxmoxer's default of 5 s.
MIN_HTTP_TIMEOUT_S = 30
_UPID = re.compile(r"^UPID:(?P<node>[^:]+):")
_LOCK_TEXTS = ("can't lock file", "VM is locked")

__all__ = [
    "Credentials", "RetryPolicy", "PveClient", "PveApiError", "PveConnectionLost", "PveTaskFailed",
    "PveTaskTimeout", "PveUnreachable", "brief", "connect", "credentials_from_env", "is_task_ok",
]


# --------------------------------------------------------------------------- errors

class PveApiError(DeployError):
    """PVE answered an API call with an HTTP error. ``status`` is the HTTP status; ``message``
    PVE's text (verbatim); ``errors`` the per-parameter messages of a 400, if any."""

    def __init__(self, what: str, status: int, message: str, errors: Any = None, command: str | None = None,
                 remedy: str = "") -> None:
        if isinstance(errors, dict) and list(errors) == ["errors"]:
            errors = errors["errors"]  # proxmoxer's wrapping of a body that is not JSON
        if isinstance(errors, (bytes, bytearray)):
            errors = errors.decode("utf-8", "replace")
        if isinstance(errors, str):
            # Not PVE's JSON but a body (a proxy's HTML page): its text, without tags, in brief.
            errors = " ".join(re.sub(r"<[^>]*>", " ", errors).split())[:200]
            errors = "" if errors in message else errors
        detail = redact(message + (f" {errors}" if errors else ""))
        super().__init__(what=what, cause=f"PVE answered HTTP {status}: {detail}", remedy=remedy, command=command)
        self.status = status
        self.message = message
        self.errors = errors


class PveConnectionLost(DeployError):
    """A write's connection broke: PVE may or may not have carried it out. Look before repeating."""


class PveUnreachable(DeployError):
    """PVE did not answer a read (connection refused/reset, timeout) even after the retries."""


def brief(err: BaseException) -> str:
    """A short, redacted reason for a requests/urllib3 error: ``[Errno 111] Connection refused``,
    ``RemoteDisconnected: Remote end closed connection without response``, ``ReadTimeout``...
    requests nests urllib3's pool/adapter texts several levels deep; operators need the last one."""
    # OpenSSL's source line ("(_ssl.c:1006)") varies between Python builds and helps no operator.
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", " ".join(str(err).split()))
    if isinstance(err, requests.exceptions.Timeout):
        return redact(f"{type(err).__name__}: no answer within the HTTP timeout")
    m = re.search(r"\[(?:SSL|X509|PEM|ASN1): [A-Z0-9_]+\][^'\"()]*", text) or re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if m:
        return redact(m.group(0).strip())
    m = re.search(r"(RemoteDisconnected|ConnectionResetError|ConnectionAbortedError|BrokenPipeError|"
                  r"IncompleteRead|ProtocolError)\(([^)]*)\)", text)
    if m:
        quoted = re.findall(r"['\"]([^'\"]+)['\"]", m.group(2))
        return redact(f"{m.group(1)}: {quoted[-1] if quoted else m.group(2)}".rstrip(": "))
    return redact(f"{type(err).__name__}: {text[:200]}")


class PveTaskFailed(DeployError):
    """A PVE task ended with an exit status other than OK / WARNINGS. ``exitstatus`` and
    ``log_lines`` are PVE's (``/nodes/{node}/tasks/{upid}/log``)."""

    def __init__(self, what: str, upid: str, exitstatus: str, log_lines: list[str], command: str | None = None) -> None:
        tail = "\n    ".join(log_lines[-20:])
        super().__init__(what=what, cause=f"PVE task ended with: {exitstatus}\n    task log:\n    {tail}",
                         evidence={"PVE task log": "\n".join(log_lines)}, command=command)
        self.upid = upid
        self.exitstatus = exitstatus
        self.log_lines = log_lines


class PveTaskTimeout(DeployError):
    """A PVE task was still running when our wait (seconds) ran out; it may still finish."""

    def __init__(self, what: str, upid: str, timeout_s: float, command: str | None = None) -> None:
        super().__init__(
            what=what, command=command,
            cause=f"PVE task {upid} still running after {timeout_s:.0f} s",
            remedy="look at the task in the PVE web UI (Tasks) or `pvesh get /nodes/<node>/tasks/<upid>/status`; "
                   "a VM with a PCI device and much RAM starts slowly: raise proxmox.start_timeout_s")
        self.upid = upid


def is_task_ok(exitstatus: str | None) -> bool:
    """True for PVE's successful task exit statuses: ``OK`` and ``WARNINGS: <n>`` (PVE::RESTEnvironment)."""
    return exitstatus == "OK" or bool(exitstatus and exitstatus.startswith("WARNINGS:"))


# ----------------------------------------------------------------------- credentials

@dataclass(frozen=True)
class Credentials:
    """How to log in. ``user`` is ``name@realm``; a token has ``token_name`` + ``token_secret``,
    a ticket login has ``password``. Secrets are excluded from ``repr``."""

    user: str
    token_name: str | None = None
    token_secret: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, token_name={self.token_name!r})"

    @property
    def is_token(self) -> bool:
        return self.token_name is not None

    @property
    def principal(self) -> str:
        """Who PVE sees: ``user@realm!token`` for a token, else ``user@realm``."""
        return f"{self.user}!{self.token_name}" if self.is_token else self.user

    @property
    def may_set_raw_pci(self) -> bool:
        """Only a root@pam *ticket* login may set ``hostpciN: host=...`` (qemu-server
        ``API2/Qemu.pm`` ``check_hostpci_perm``); every API token, even root@pam's, may not."""
        return not self.is_token and self.user == "root@pam"


def _secret(name: str) -> str | None:
    try:
        from provisioners.secrets import get_secret  # owned by the secrets module; optional here
    except ImportError:
        value = os.environ.get(name) or None
        register_secret(value)
        return value
    return get_secret(name)


def _clean_secret(name: str, value: str | None, *, header: bool = False) -> str | None:
    """``value`` without the line break a copy/paste or ``$(cat file)`` leaves at its ends (and,
    for a token, without surrounding blanks); registered for redaction in that form too.

    ``header``: the value travels in the ``Authorization`` HTTP header, which cannot carry control
    or non-ASCII characters; http.client would raise with the whole header - the secret - in its
    message, so such a value is refused here, naming the variable and never the value.
    """
    if value is None:
        return None
    value = value.strip() if header else value.strip("\r\n")
    register_secret(value)
    if header and any(ord(c) < 33 or ord(c) > 126 for c in value):
        raise DeployError(f"{name} contains characters an HTTP header cannot carry (blanks, control or "
                          "non-ASCII characters)",
                          remedy="copy the token secret again from PVE (a UUID: "
                                 "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return value or None


def credentials_from_env() -> Credentials:
    """Credentials from ``PROXMOX_USER``, ``PROXMOX_TOKEN_NAME`` + ``PROXMOX_TOKEN_SECRET`` or
    ``PROXMOX_PASSWORD``. ``PROXMOX_TOKEN_ID=USER@REALM!TOKENID`` may replace user + token name.
    Raises DeployError naming the variables when they are incomplete (or the secrets file is bad)."""
    user = os.environ.get("PROXMOX_USER", "").strip()
    token_name = os.environ.get("PROXMOX_TOKEN_NAME", "").strip() or None
    token_id = os.environ.get("PROXMOX_TOKEN_ID", "").strip()
    if token_id and "!" in token_id:  # USER@REALM!TOKENID, the form PVE prints
        user, token_name = token_id.split("!", 1)
    if token_id and "!" not in token_id and not token_name:
        raise DeployError("bad PROXMOX_TOKEN_ID", cause=f"{token_id!r} has no '!TOKENID' part",
                          remedy="write it as PVE shows it: USER@REALM!TOKENID, e.g. deployer@pve!ci")
    remedy = ("set PROXMOX_USER (e.g. deployer@pve) and either PROXMOX_TOKEN_NAME + PROXMOX_TOKEN_SECRET "
              "(API token) or PROXMOX_PASSWORD (root@pam ticket login); see README.md")
    if not user:
        raise DeployError("no Proxmox credentials", cause="PROXMOX_USER is not set", remedy=remedy)
    if "@" not in user:
        raise DeployError("bad PROXMOX_USER", cause=f"{user!r} has no realm", remedy="write it as name@realm, e.g. root@pam")
    if token_name:
        secret = _clean_secret("PROXMOX_TOKEN_SECRET", _secret("PROXMOX_TOKEN_SECRET"), header=True)
        if not secret:
            raise DeployError("no Proxmox token secret", cause="PROXMOX_TOKEN_NAME is set but PROXMOX_TOKEN_SECRET is not",
                              remedy=remedy)
        return Credentials(user=user, token_name=token_name, token_secret=secret)
    password = _clean_secret("PROXMOX_PASSWORD", _secret("PROXMOX_PASSWORD"))
    if not password:
        raise DeployError("no Proxmox credentials", cause="neither PROXMOX_TOKEN_NAME nor PROXMOX_PASSWORD is set",
                          remedy=remedy)
    return Credentials(user=user, password=password)


# ---------------------------------------------------------------------------- client

@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for reads and safe repeats. Seconds; ``attempts`` counts the first try."""

    attempts: int = 6
    initial_s: float = 0.5
    max_s: float = 8.0
    lock_attempts: int = 4
    lock_initial_s: float = 2.0
    poll_initial_s: float = 0.5
    poll_max_s: float = 5.0


_TRANSIENT = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


class PveClient:
    """A logged-in PVE API client for one node.

    ``path`` arguments are API paths below ``/api2/json`` (``"/nodes/pve/qemu/140/config"``).
    Results are PVE's ``data``. Errors: :class:`PveApiError` (HTTP error),
    :class:`PveConnectionLost` (a write whose outcome is unknown), DeployError (cannot connect).
    """

    def __init__(self, endpoint: str, node: str, credentials: Credentials, *, verify: bool | str = True,
                 timeout_s: float = MIN_HTTP_TIMEOUT_S, retry: RetryPolicy | None = None) -> None:
        parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        if parts.scheme != "https" or not parts.hostname:
            raise DeployError("bad proxmox.endpoint", cause=f"{endpoint!r} is not https://HOST:PORT",
                              remedy="write it as https://HOST:8006")
        self.endpoint = f"https://{parts.netloc}"
        self.host = parts.hostname
        self.port = parts.port or 8006
        self.node = node
        self.credentials = credentials
        self.verify = verify
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        #: Number of requests repeated after a transient error (for reports and tests).
        self.retries = 0
        self.logins = 0
        self._api: ProxmoxAPI | None = None
        self._login()

    # ------------------------------------------------------------------ connection

    def _login(self) -> None:
        c = self.credentials
        # An IPv6 address keeps its brackets: proxmoxer splits "HOST:PORT" at the last ':' only
        # when the host is bracketed, and would otherwise read "fd00::10:8006" as a host on port 8006.
        host = f"[{self.host}]" if ":" in self.host else self.host
        kwargs: dict[str, Any] = dict(host=f"{host}:{self.port}", user=c.user, verify_ssl=self.verify,
                                      timeout=self.timeout_s)
        if c.is_token:
            kwargs.update(token_name=c.token_name, token_value=c.token_secret)
        else:
            kwargs.update(password=c.password)
        for attempt in Retrying(stop=stop_after_attempt(self.retry.attempts), reraise=True,
                                wait=wait_exponential(multiplier=self.retry.initial_s, max=self.retry.max_s),
                                retry=retry_if_exception_type(_TRANSIENT), before_sleep=self._note_retry("login")):
            with attempt:
                try:
                    self._api = ProxmoxAPI(**kwargs)
                except requests.exceptions.SSLError as err:
                    raise self._tls_error(err) from None
                except _TRANSIENT:
                    raise
                except requests.exceptions.RequestException as err:
                    raise DeployError(f"login to {self.endpoint} failed", cause=brief(err),
                                      remedy="check that proxmox.endpoint is the PVE API (https://HOST:8006)") from None
                except (KeyError, TypeError, ValueError) as err:
                    # proxmoxer reads data.ticket from the answer: something else answered. The
                    # error's text is withheld: a ValueError of http.client quotes request headers.
                    raise DeployError(f"login to {self.endpoint} failed: the answer is not PVE's",
                                      cause=f"{type(err).__name__} reading the login answer",
                                      remedy="check that proxmox.endpoint is the PVE API (https://HOST:8006), "
                                             "not a proxy or another web server") from None
                except AuthenticationError as err:
                    raise DeployError(f"login to {self.endpoint} as {c.user} failed", cause=redact(str(err)),
                                      remedy="check PROXMOX_USER / PROXMOX_PASSWORD (a password login needs the "
                                             "realm, e.g. root@pam)") from None
        self.logins += 1

    def _tls_error(self, err: Exception) -> DeployError:
        return DeployError(
            f"TLS verification of {self.endpoint} failed", cause=brief(err),
            remedy="set proxmox.ca_file to the PVE CA (/etc/pve/pve-root-ca.pem on the node); only for a lab, "
                   "--insecure turns verification off")

    def _note_retry(self, what: str) -> Callable:
        def before_sleep(state) -> None:
            self.retries += 1
            err = state.outcome.exception() if state.outcome else None
            reason = brief(err) if err is not None else "?"
            log.warning(redact(f"{what}: {reason}; retry {state.attempt_number} in {state.next_action.sleep:.1f} s"))
        return before_sleep

    def _resource(self, path: str):
        assert self._api is not None
        return self._api(path.strip("/"))

    def _call(self, method: str, path: str, params: dict[str, Any]) -> Any:
        """One request; a 401 on a ticket login logs in again and repeats it once (PVE checked
        the ticket before doing anything, so a repeat is safe even for a write)."""
        params = {k: v for k, v in params.items() if v is not None}
        for relogin in (True, False):
            try:
                res = self._resource(path)
                if method == "GET":
                    answer = res.get(**params)
                elif method == "DELETE":
                    answer = res.delete(**params)
                else:
                    answer = getattr(res, method.lower())(**params)
                if isinstance(answer, dict) and list(answer) == ["errors"] and isinstance(answer["errors"], bytes):
                    # proxmoxer's stand-in for a 2xx body that is not JSON: not PVE talking.
                    raise self._not_pve(method, path, "a page that is not JSON")
                return answer
            except (KeyError, TypeError) as err:
                # proxmoxer reads the answer's "data" member; JSON without it (or JSON that is not
                # an object) is not PVE's API.
                what = f"JSON without {err}" if isinstance(err, KeyError) else "JSON that is not an object"
                raise self._not_pve(method, path, what) from None
            except ResourceException as err:
                if err.status_code == 401 and relogin and not self.credentials.is_token:
                    log.info("PVE ticket no longer valid; logging in again")
                    self._login()
                    continue
                raise self._api_error(method, path, err) from None
            except AuthenticationError:
                # proxmoxer renews a ticket older than an hour with the ticket itself; an expired
                # one fails there: log in with the password instead.
                if not relogin or self.credentials.is_token:
                    raise
                self._login()
                continue
            except requests.exceptions.SSLError as err:
                raise self._tls_error(err) from None
            except _TRANSIENT:
                raise  # the verbs decide: reads are retried, writes are looked at first
            except (ValueError, UnicodeError) as err:
                header = isinstance(err, requests.exceptions.InvalidHeader)
                if isinstance(err, requests.exceptions.RequestException) and not header:
                    raise DeployError(f"{method} {path} to {self.endpoint} failed", cause=brief(err),
                                      command=f"{method} {path}") from None
                # requests/http.client refusing a header value: the message quotes the header,
                # which holds the token secret - so only the kind of error is shown.
                raise DeployError(f"{method} {path} to {self.endpoint} could not be sent",
                                  cause=f"{type(err).__name__} while building the request (its text is withheld: "
                                        "it may contain the credentials)",
                                  remedy="check PROXMOX_USER / PROXMOX_TOKEN_ID / PROXMOX_TOKEN_SECRET for stray "
                                         "blanks or non-ASCII characters", command=f"{method} {path}") from None
            except requests.exceptions.RequestException as err:
                # Not PVE's answer (a proxy, a redirect loop, a broken stream): nothing to retry.
                raise DeployError(f"{method} {path} to {self.endpoint} failed", cause=brief(err),
                                  remedy="check that proxmox.endpoint is the PVE API (https://HOST:8006)",
                                  command=f"{method} {path}") from None
        raise AssertionError("unreachable")

    def _not_pve(self, method: str, path: str, what: str) -> DeployError:
        return DeployError(f"{method} {path}: {self.endpoint} answered with {what}, not the PVE API",
                           remedy="check that proxmox.endpoint is the PVE API (https://HOST:8006), not a proxy "
                                  "or another web server", command=f"{method} {path}")

    @staticmethod
    def _api_error(method: str, path: str, err: ResourceException) -> PveApiError:
        message = str(err.content or err.status_message or "").strip()
        remedy = ""
        if err.status_code == 401:
            remedy = "check the credentials (PROXMOX_USER, PROXMOX_TOKEN_NAME/SECRET or PROXMOX_PASSWORD)"
        elif err.status_code == 403:
            remedy = "grant the missing privilege to the user/token (see README.md: least-privilege PVE role)"
        elif err.status_code == 595:
            remedy = "the node is offline or unreachable from the API endpoint"
        return PveApiError(f"PVE refused {method} {path}", err.status_code, redact(message),
                           errors=err.errors, command=f"{method} {path}", remedy=remedy)

    # ----------------------------------------------------------------------- verbs

    def get(self, path: str, /, **params: Any) -> Any:
        """GET ``path``; retried with backoff on connection errors/timeouts (reads are safe)."""
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.retry.attempts), reraise=True,
                                    wait=wait_exponential(multiplier=self.retry.initial_s, max=self.retry.max_s),
                                    retry=retry_if_exception_type(_TRANSIENT),
                                    before_sleep=self._note_retry(f"GET {path}")):
                with attempt:
                    return self._call("GET", path, params)
        except _TRANSIENT as err:
            raise PveUnreachable(f"PVE at {self.endpoint} did not answer GET {path}",
                                 cause=f"{brief(err)} ({self.retry.attempts} tries)",
                                 remedy="check the network path to the PVE API and that pveproxy runs, then run "
                                        "again (what was done so far is reported above)",
                                 command=f"GET {path}") from None
        raise AssertionError("unreachable")

    def post(self, path: str, /, **data: Any) -> Any:
        """POST; see :meth:`write`."""
        return self.write("POST", path, **data)

    def put(self, path: str, /, **data: Any) -> Any:
        """PUT; see :meth:`write`."""
        return self.write("PUT", path, **data)

    def delete(self, path: str, /, **params: Any) -> Any:
        """DELETE; see :meth:`write`."""
        return self.write("DELETE", path, **params)

    def write(self, method: str, path: str, /, *, idempotent: bool = False, **data: Any) -> Any:
        """A state-changing request.

        After a broken connection it is repeated (with backoff) only when ``idempotent`` (the
        same request twice has the effect of once: a config PUT, an absolute resize, a stop);
        otherwise :class:`PveConnectionLost` is raised and the caller looks before repeating.
        While PVE answers that the VM config lock is held (``can't lock file ... got timeout``,
        ``VM is locked``) it is repeated with backoff, as PVE acted on nothing.
        """
        wait = self.retry.lock_initial_s
        lock_tries = transient_tries = 0
        while True:
            try:
                return self._call(method, path, data)
            except _TRANSIENT as err:
                transient_tries += 1
                if not idempotent or transient_tries >= self.retry.attempts:
                    raise PveConnectionLost(
                        f"connection lost during {method} {path}", cause=brief(err),
                        remedy="PVE may or may not have carried it out; the deployer checks before repeating",
                        command=f"{method} {path}") from None
                delay = min(self.retry.initial_s * 2 ** (transient_tries - 1), self.retry.max_s)
                self.retries += 1
                log.warning(redact(f"{method} {path}: {brief(err)}; idempotent, retry in {delay:.1f} s"))
                time.sleep(delay)
            except PveApiError as err:
                locked = any(t in err.message for t in _LOCK_TEXTS)
                lock_tries += locked
                if not locked or lock_tries >= self.retry.lock_attempts:
                    if locked:
                        err.remedy = ("another task holds the VM's config lock (backup, migration, snapshot or a "
                                      "hung task): wait for it (PVE web UI: Tasks) or clear a stale lock with "
                                      "`qm unlock <vmid>`, then run again")
                    raise
                self.retries += 1
                log.warning(redact(f"{method} {path}: {err.message}; retry {lock_tries} in {wait:.1f} s"))
                time.sleep(wait)
                wait = min(wait * 2, self.retry.max_s)

    def submit_task(self, method: str, path: str, /, *, node: str, vmid: int, task_type: str, **data: Any) -> str:
        """Send a request that starts a task which must not run twice (a VM start); returns its UPID.

        After a broken connection it looks in ``GET /nodes/{node}/tasks?vmid=`` for a
        ``task_type`` task that was not there before the request: found = ours, followed;
        none = the request never arrived, sent once more.
        """
        tasks = f"/nodes/{node}/tasks"
        before = {t.get("upid") for t in self.get(tasks, vmid=vmid) or []}
        try:
            return str(self.write(method, path, **data))
        except PveConnectionLost:
            log.warning(redact(f"connection lost during {method} {path}; looking for its task"))
        for task in self.get(tasks, vmid=vmid) or []:
            if task.get("type") == task_type and str(task.get("id")) == str(vmid) and task.get("upid") not in before:
                log.info(redact(f"{method} {path} did reach PVE: following {task['upid']}"))
                return str(task["upid"])
        log.warning(redact(f"{method} {path} did not reach PVE (no new {task_type} task); sending it once more"))
        return str(self.write(method, path, **data))

    # ----------------------------------------------------------------------- tasks

    def task_log(self, upid: str) -> list[str]:
        """All lines of a task's log (``GET /nodes/{node}/tasks/{upid}/log?limit=0``; PVE's 0 = no limit)."""
        node = self._task_node(upid)
        lines = self.get(f"/nodes/{node}/tasks/{upid}/log", limit=0) or []
        return [str(item.get("t", "")) for item in lines if isinstance(item, dict)]

    def _task_node(self, upid: str) -> str:
        m = _UPID.match(str(upid))
        if not m:
            raise DeployError("PVE returned no task id", cause=f"expected a UPID, got {upid!r}")
        return m.group("node")

    def wait_task(self, upid: str, timeout_s: float, what: str = "", command: str | None = None) -> dict[str, Any]:
        """Wait until the task ``upid`` stops (polls with backoff: ``retry.poll_initial_s`` up to
        ``retry.poll_max_s``); returns its final status dict.

        Raises :class:`PveTaskFailed` (exitstatus not OK/WARNINGS, with the task log) or
        :class:`PveTaskTimeout` when ``timeout_s`` seconds pass first.
        Source: ``GET /nodes/{node}/tasks/{upid}/status`` -> ``status`` running|stopped, ``exitstatus``.
        """
        what = what or f"PVE task {upid}"
        node = self._task_node(upid)
        polls = Retrying(retry=retry_if_result(lambda st: st.get("status") != "stopped"),
                         wait=wait_exponential(multiplier=self.retry.poll_initial_s, max=self.retry.poll_max_s),
                         stop=stop_after_delay(timeout_s))
        try:
            status = polls(lambda: self.get(f"/nodes/{node}/tasks/{upid}/status") or {})
        except RetryError:
            raise PveTaskTimeout(f"{what} did not finish in time", upid, timeout_s, command=command) from None
        exitstatus = str(status.get("exitstatus", ""))
        if is_task_ok(exitstatus):
            if exitstatus != "OK":
                log.warning(redact(f"{what}: {exitstatus}"))
            return status
        raise PveTaskFailed(f"{what} failed", upid, redact(exitstatus),
                            [redact(x) for x in self.task_log(upid)], command=command)

    def run_task(self, method: str, path: str, timeout_s: float, what: str, /, *, idempotent: bool = False,
                 **data: Any) -> dict[str, Any]:
        """``write`` a request that answers with a UPID, then :meth:`wait_task` it (``timeout_s`` seconds)."""
        upid = self.write(method, path, idempotent=idempotent, **data)
        return self.wait_task(str(upid), timeout_s, what=what, command=f"{method} {path}")

    # ---------------------------------------------------------------- permissions

    def has_privilege(self, path: str, privilege: str) -> bool:
        """True if the logged-in user/token holds ``privilege`` on ``path`` (or a parent).
        Source: ``GET /access/permissions?path=...`` ({path: {privilege: 1}})."""
        try:
            perms = self.get("/access/permissions", path=path) or {}
        except PveApiError:
            return False
        for granted, privs in perms.items():
            if (granted == "/" or path == granted or path.startswith(granted.rstrip("/") + "/")) and privs.get(privilege):
                return True
        return False


# --------------------------------------------------------------------------- connect

def _holds_pem_certificate(path: str) -> bool:
    """True if ``path`` can be read and has a PEM ``BEGIN CERTIFICATE`` block (what OpenSSL's CA
    loading needs; anything else fails later as an obscure X509 error on the first request)."""
    try:
        with open(path, "rb") as fh:
            return b"-----BEGIN CERTIFICATE-----" in fh.read(1024 ** 2)
    except OSError:
        return False


def connect(catalog: Any, *, insecure: bool = False, credentials: Credentials | None = None,
            endpoint: str | None = None, ca_file: str | None = None, retry: RetryPolicy | None = None,
            timeout_s: float | None = None) -> PveClient:
    """A logged-in :class:`PveClient` for ``catalog.proxmox`` (endpoint, node, verify_tls, ca_file,
    timeout_s in seconds).

    ``insecure`` (or ``PROXMOX_INSECURE=1``) turns TLS verification off and prints a warning;
    ``catalog.proxmox.verify_tls: false`` alone is refused. ``credentials`` default to
    :func:`credentials_from_env`; ``endpoint`` / ``ca_file`` / ``timeout_s`` override the catalog
    (``PROXMOX_CA_FILE`` too). Makes one read (``GET /version``) to prove the login works.
    Raises DeployError (bad settings, TLS failure, login refused, unreachable).
    """
    px = catalog.proxmox
    insecure = insecure or os.environ.get("PROXMOX_INSECURE", "") in ("1", "true", "yes")
    verify: bool | str
    if insecure:
        print("WARNING: TLS certificate verification of the Proxmox API is OFF (--insecure); "
              "anyone on the path can read the credentials", file=sys.stderr)
        verify = False
    elif getattr(px, "verify_tls", True) is False:
        raise DeployError("proxmox.verify_tls is false but --insecure was not given",
                          remedy="set proxmox.ca_file to the PVE CA instead, or pass --insecure (PROXMOX_INSECURE=1) "
                                 "knowingly")
    else:
        ca = ca_file or os.environ.get("PROXMOX_CA_FILE") or getattr(px, "ca_file", None)
        if ca and not os.path.isfile(os.path.expanduser(str(ca))):
            raise DeployError("proxmox.ca_file not found", cause=str(ca), remedy="copy /etc/pve/pve-root-ca.pem "
                              "from the node and point proxmox.ca_file at it")
        if ca and not _holds_pem_certificate(os.path.expanduser(str(ca))):
            raise DeployError("proxmox.ca_file holds no PEM certificate", cause=str(ca),
                              remedy="copy /etc/pve/pve-root-ca.pem from the node (it starts with "
                                     "-----BEGIN CERTIFICATE-----) and point proxmox.ca_file at it")
        verify = os.path.expanduser(str(ca)) if ca else True
    timeout = timeout_s if timeout_s is not None else max(MIN_HTTP_TIMEOUT_S, float(getattr(px, "timeout_s", 0) or 0))
    url = endpoint or str(px.endpoint)
    try:
        client = PveClient(url, px.node, credentials or credentials_from_env(), verify=verify,
                           timeout_s=timeout, retry=retry)
        client.get("/version")
    except (*_TRANSIENT, PveUnreachable) as err:
        cause = err.cause if isinstance(err, PveUnreachable) else brief(err)
        raise DeployError(f"cannot reach the Proxmox API at {url}", cause=cause,
                          remedy="check proxmox.endpoint, the network path and that pveproxy runs") from None
    return client
