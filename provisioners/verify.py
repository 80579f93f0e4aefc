"""The verify ladder: read-only checks of a deployed VM, over the run's SSH session.

Each rung is a :class:`LadderStep`: a callable ``(host, session, vm) -> list[Check]`` with a
``group`` (``gpu``, ``driver``, ``vllm``, ``ollama``) and a ``name``. ``host`` is a testinfra
``Host`` whose backend runs every command through the SAME
:class:`provisioners.remote.RemoteSession` (one SSH connection, its host-key pinning, sudo -n,
time-outs and reconnect), ``session`` that session itself, ``vm`` the catalog VM.

:data:`VERIFY_LADDER` is ordered: GPU (lspci -> nvidia-smi -> kernel log -> nvcc -> CUDA
sample), then driver, then what other modules append. The vLLM and Ollama modules extend it
when imported::

    from provisioners.verify import ladder_step

    @ladder_step("vllm", "vllm service")
    def vllm_service(host, session, vm) -> list[Check]: ...

:func:`run_ladder` imports :data:`EXTENSION_MODULES` first so that their rungs are present.
Every rung must be read-only (``@verify`` scenarios and ``make verify`` run it against any
VM); each :class:`~provisioners.guest.base.Check` carries the command output as evidence.
A rung that raises becomes one failed check naming the error: the ladder always completes.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import testinfra.backend.base
import testinfra.host

from provisioners.errors import DeployError
from provisioners.guest.base import Check, vm_get
from provisioners.parsers import dmesg as dmesg_parser
from provisioners.parsers import lspci as lspci_parser
from provisioners.parsers import nvidia_smi
from provisioners.redact import redact

GROUPS = ("gpu", "driver", "vllm", "ollama")
EXTENSION_MODULES = ("provisioners.guest.vllm", "provisioners.guest.ollama")
SMI_QUERY = "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader"

StepFn = Callable[[Any, Any, Any], list[Check]]


@dataclass(frozen=True)
class LadderStep:
    """One rung: ``group`` (see :data:`GROUPS`), ``name`` (unique), ``fn(host, session, vm)``."""

    group: str
    name: str
    fn: StepFn

    def __call__(self, host: Any, session: Any, vm: Any) -> list[Check]:
        return self.fn(host, session, vm)


VERIFY_LADDER: list[LadderStep] = []


def ladder_step(group: str, name: str | None = None) -> Callable[[StepFn], StepFn]:
    """Decorator: append ``fn`` to :data:`VERIFY_LADDER` under ``group`` (re-registering the
    same ``name`` replaces the old rung in place, so a module reload does not duplicate it).
    Returns ``fn`` unchanged."""
    def register(fn: StepFn) -> StepFn:
        step = LadderStep(group, name or fn.__name__, fn)
        for i, old in enumerate(VERIFY_LADDER):
            if old.name == step.name:
                VERIFY_LADDER[i] = step
                break
        else:
            VERIFY_LADDER.append(step)
        return fn
    return register


# --------------------------------------------------------------------------------------------
# testinfra on top of the session


class SessionBackend(testinfra.backend.base.BaseBackend):
    """A testinfra backend that runs commands through a :class:`RemoteSession` (its one SSH
    connection; ``sudo -n``; time-outs; reconnect of read-only commands)."""

    NAME = "paramiko"

    def __init__(self, session: Any, *, timeout_s: float = 120, **kwargs: Any) -> None:
        self.session = session
        self.timeout_s = timeout_s
        super().__init__(session.host, **kwargs)
        self._encoding = "utf-8"

    def get_sudo_command(self, command: str, sudo_user: str | None) -> str:
        if self.session.user == "root" and sudo_user in (None, "root"):
            return command
        if sudo_user is None:
            return self.quote("sudo -n /bin/sh -c %s", command)
        return self.quote("sudo -n -u %s /bin/sh -c %s", sudo_user, command)

    def run(self, command: str, *args: str, **kwargs: Any) -> testinfra.backend.base.CommandResult:
        cmd = self.get_command(command, *args)
        r = self.session.run(cmd, check=False, timeout_s=self.timeout_s)
        return self.result(r.exit_code, cmd.encode(), r.stdout.encode(), r.stderr.encode())


def infra_host(session: Any) -> testinfra.host.Host:
    """A testinfra ``Host`` whose commands go through ``session`` (no second connection)."""
    backend = SessionBackend(session)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


# --------------------------------------------------------------------------------------------
# the GPU rungs


def _evidence(cmd: str, r: Any) -> str:
    out = (r.stdout + ("\n" + r.stderr if r.stderr.strip() else "")).strip()
    return redact(f"$ {cmd}\n{out}\n(exit {r.rc})")


@ladder_step("gpu", "lspci")
def check_lspci(host: Any, session: Any, vm: Any) -> list[Check]:
    """The catalog's GPU (``gpu.expected.pci_id``, e.g. 10de:2d04) is in ``lspci -nnk`` and bound
    to the ``nvidia`` driver (matched by numeric id: lspci may print ``NVIDIA Corporation
    Device``)."""
    pci_id = str(vm_get(vm, "gpu.expected.pci_id", "")).lower()
    cmd = "lspci -nnk -d 10de:"
    r = host.run(cmd)
    devs = [d for d in lspci_parser.parse(r.stdout) if d.vendor_device == pci_id]
    if not devs:
        actual = "not present" if r.rc == 0 else f"lspci failed (exit {r.rc})"
    else:
        actual = f"{pci_id} at {devs[0].address}, driver {devs[0].driver_in_use or 'none'}"
    ok = bool(devs) and devs[0].driver_in_use == "nvidia"
    return [Check("lspci", ok, f"{pci_id} bound to nvidia", actual, _evidence(cmd, r))]


@ladder_step("gpu", "nvidia-smi")
def check_nvidia_smi(host: Any, session: Any, vm: Any) -> list[Check]:
    """``nvidia-smi --query-gpu=name,memory.total,driver_version``: name and memory.total (MiB)
    equal the catalog's ``gpu.expected.name|memory_mib``; a driver version is shown."""
    name = vm_get(vm, "gpu.expected.name")
    mib = vm_get(vm, "gpu.expected.memory_mib")
    r = host.run(SMI_QUERY)
    ev = _evidence(SMI_QUERY, r)
    rows = nvidia_smi.parse_query_csv(r.stdout, ["name", "memory.total", "driver_version"]) \
        if r.rc == 0 else []
    if not rows:
        why = nvidia_smi.classify_failure(r.stdout + r.stderr) or f"exit {r.rc}"
        return [Check(n, False, e, f"nvidia-smi fails: {why}", ev) for n, e in (
            ("nvidia-smi name", str(name)), ("nvidia-smi memory.total", f"{mib} MiB"),
            ("nvidia-smi driver version", "shown"))]
    row = rows[0]
    # The plain table is what operators know and what the report shows as living documentation.
    t = host.run("nvidia-smi")
    table = nvidia_smi.parse_table(t.stdout) if t.rc == 0 else None
    shown = [g for g in (table.gpus if table else []) if g.get("memory_total_mib") == (int(mib) if mib else None)]
    return [
        Check("nvidia-smi table", bool(shown), f"a GPU with {mib} MiB",
              f"driver {table.driver_version}, {len(table.gpus)} GPU(s)" if table else f"exit {t.rc}",
              _evidence("nvidia-smi", t)),
        Check("nvidia-smi name", row.get("name") == name, str(name), str(row.get("name")), ev),
        Check("nvidia-smi memory.total", row.get("memory.total") == (int(mib) if mib else None),
              f"{mib} MiB", f"{row.get('memory.total')} MiB", ev),
        Check("nvidia-smi driver version", bool(row.get("driver_version")), "shown",
              str(row.get("driver_version")), ev),
    ]


_ERROR_KINDS_OK = {"benign", "module-loaded"}


@ladder_step("gpu", "kernel log")
def check_kernel_log(host: Any, session: Any, vm: Any) -> list[Check]:
    """No NVRM error in the kernel log of this boot (``dmesg``; benign lines such as ``module
    verification failed`` and taint notices are allowed; classification by
    :mod:`provisioners.parsers.dmesg`)."""
    cmd = "dmesg"
    r = session.run(cmd, sudo=True, check=False, timeout_s=60)
    events = dmesg_parser.parse(r.stdout)
    bad = [e for e in events if e.kind not in _ERROR_KINDS_OK]
    nv_lines = [ln for ln in r.stdout.splitlines()
                if any(k in ln for k in ("NVRM", "nvidia", "Key was rejected"))][-60:]
    ev = redact(f"$ sudo dmesg | grep -E 'NVRM|nvidia'\n" + "\n".join(nv_lines)
                + ("" if r.exit_code == 0 else f"\n(dmesg exit {r.exit_code}: {r.stderr.strip()})"))
    if r.exit_code != 0:
        return [Check("kernel log", False, "no NVRM errors", "dmesg could not be read", ev)]
    actual = "no NVRM errors" if not bad else \
        "; ".join(f"{e.kind}: {e.text[:160]}" for e in bad[:5])
    return [Check("kernel log", not bad, "no NVRM errors (benign lines allowed)", actual, ev)]


@ladder_step("gpu", "cuda")
def check_cuda(host: Any, session: Any, vm: Any) -> list[Check]:
    """nvcc of the catalog's CUDA version, no driver-pulling CUDA package, and a CUDA sample
    ran (:meth:`provisioners.guest.cuda.CudaComponent.verify`)."""
    from provisioners.guest.cuda import CudaComponent  # noqa: PLC0415
    return CudaComponent(vm).verify(session)


@ladder_step("driver", "driver")
def check_driver(host: Any, session: Any, vm: Any) -> list[Check]:
    """ubuntu-drivers lists the GPU, open flavour of branch >= minimum, license Dual MIT/GPL,
    no reboot pending, nvidia-smi answers (:meth:`DriverComponent.verify`)."""
    from provisioners.guest.driver import DriverComponent  # noqa: PLC0415
    return DriverComponent(vm).verify(session)


# --------------------------------------------------------------------------------------------


def load_extensions(modules: Iterable[str] = EXTENSION_MODULES) -> None:
    """Import the modules that append rungs (a module that does not exist yet is skipped;
    an import error inside an existing module is raised)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def run_ladder(session: Any, catalog: Any, vm: Any, area: str | Iterable[str] | None = None,
               *, host: Any = None, steps: Iterable[LadderStep] | None = None) -> list[Check]:
    """Run the rungs of ``area`` (a group name of :data:`GROUPS`, several, or None = all) in
    ladder order for catalog VM ``vm`` and return every :class:`Check` (``catalog``, the whole
    catalog, is not needed today). ``host`` defaults to :func:`infra_host` (session);
    ``steps`` overrides :data:`VERIFY_LADDER` (tests). A rung raising :class:`DeployError` (or
    any exception) yields one failed check ``<rung>: error`` with the message as evidence.
    Read-only."""
    load_extensions()
    if isinstance(area, str):
        wanted: set[str] | None = {area}
    else:
        wanted = set(area) if area is not None else None
    unknown = (wanted or set()) - set(GROUPS) - {s.group for s in VERIFY_LADDER}
    if unknown:
        raise DeployError(what=f"unknown verify area(s): {', '.join(sorted(unknown))}",
                          remedy=f"use one of: {', '.join(GROUPS)}")
    host = host if host is not None else infra_host(session)
    checks: list[Check] = []
    for step in list(steps if steps is not None else VERIFY_LADDER):
        if wanted is not None and step.group not in wanted:
            continue
        try:
            checks.extend(step(host, session, vm))
        except DeployError as exc:
            checks.append(Check(step.name, False, "runs", f"error: {exc.what}",
                                redact(str(exc))))
        except Exception as exc:  # a broken rung must not hide the others
            checks.append(Check(step.name, False, "runs",
                                f"error: {type(exc).__name__}: {exc}", redact(repr(exc))))
    return checks


def summary(checks: Iterable[Check]) -> str:
    """One line per check: ``PASS|FAIL name: actual (expected ...)``, redacted."""
    lines = []
    for c in checks:
        mark = "PASS" if c.passed else "FAIL"
        exp = "" if c.passed else f" (expected {c.expected})"
        lines.append(f"{mark} {c.name}: {c.actual}{exp}")
    return redact("\n".join(lines))


__all__ = ["VERIFY_LADDER", "LadderStep", "ladder_step", "run_ladder", "infra_host",
           "SessionBackend", "load_extensions", "summary", "GROUPS", "check_lspci",
           "check_nvidia_smi", "check_kernel_log", "check_cuda", "check_driver"]
