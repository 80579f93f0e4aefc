"""The ``cuda`` component: NVIDIA's CUDA toolkit (compiler + libraries), never its driver.

facts -> plan -> apply -> verify (see :mod:`provisioners.guest.base`).

* Repository: NVIDIA's ``cuda-keyring`` package from ``vms[].stack.cuda.keyring_url``
  (``.../repos/ubuntu2404/x86_64/cuda-keyring_1.1-1_all.deb``), installed with ``dpkg -i``
  only when it is not installed yet; it adds the signed CUDA apt source (NVIDIA CUDA
  installation guide for Linux, "Network repo installation for Ubuntu").
* Package: ``cuda-toolkit-X-Y`` for ``vms[].stack.cuda.version`` ``"X.Y"``. NEVER ``cuda``,
  ``cuda-X-Y``, ``cuda-runtime-*`` or ``cuda-drivers*``: those depend on NVIDIA's own driver
  packages and would replace the open Ubuntu driver the ``driver`` component installed
  (DESIGN.md section 4). :func:`assert_allowed` enforces it on every install command.
* Version floor: compute capability 12.x (Blackwell consumer, sm_120) and 10.x need CUDA
  >= 12.8, the first toolkit with those targets (CUDA 12.8 release notes); checked at PLAN
  time from the catalog's GPU (:mod:`provisioners.gpus`) and refused with the reason.
* Verify: ``/usr/local/cuda-X.Y/bin/nvcc --version`` (nvcc is not on PATH; ``/usr/local/cuda``
  is an alternatives link that may point at another toolkit) reports release X.Y, and a CUDA
  sample ran a kernel on the GPU: ``extras/demo_suite/vectorAdd`` (``Test PASSED``, a kernel
  ran) or, if the toolkit ships no vectorAdd, ``deviceQuery`` (``Result = PASS``).
"""
from __future__ import annotations

import re
import shlex
import time
from typing import Any

from provisioners.errors import DeployError
from provisioners.guest.base import Check, Facts, vm_get
from provisioners.guest.bootstrap import (
    DPKG_QUERY, apt_get, download_sh, is_installed, parse_dpkg_query,
)
from provisioners.redact import redact
from provisioners.results import Change, OpResult

FORBIDDEN = re.compile(r"^(cuda|cuda-\d+-\d+|cuda-runtime(-\d+-\d+)?|cuda-drivers(-\d+)?"
                       r"|cuda-drivers-fabricmanager.*|nvidia-cuda-toolkit)$")
# compute capability major -> first CUDA release that can build for it (NVIDIA CUDA release
# notes: 12.8 added sm_100/sm_120; 11.8 added sm_89/sm_90; 11.1 sm_86; 11.0 sm_80).
_MIN_CUDA_BY_CC = [((12, 0), (12, 8)), ((10, 0), (12, 8)), ((9, 0), (11, 8)), ((8, 9), (11, 8)),
                   ((8, 6), (11, 1)), ((8, 0), (11, 0))]
SAMPLES = ("/usr/local/cuda-{v}/extras/demo_suite/vectorAdd",
           "/usr/local/cuda/extras/demo_suite/vectorAdd",
           "/usr/local/cuda-{v}/extras/demo_suite/deviceQuery",
           "/usr/local/cuda/extras/demo_suite/deviceQuery")
_NVCC_RELEASE = re.compile(r"release (\d+\.\d+), V(\d+\.\d+\.\d+)")


def assert_allowed(packages: list[str]) -> None:
    """Raise :class:`DeployError` if any package would pull NVIDIA's driver (see module
    docstring). Called on every install command this module builds."""
    bad = [p for p in packages if FORBIDDEN.match(p)]
    if bad:
        raise DeployError(
            what=f"refusing to install {', '.join(bad)}",
            cause="these CUDA meta-packages depend on NVIDIA's cuda-drivers and would replace "
                  "the open Ubuntu driver installed by the driver step",
            remedy="install cuda-toolkit-X-Y only (set vms[].stack.cuda.version)")


def toolkit_package(version: str) -> str:
    """``"12.8"`` -> ``"cuda-toolkit-12-8"``. Raises :class:`DeployError` for a malformed
    version."""
    m = re.fullmatch(r"(\d+)\.(\d+)", str(version).strip())
    if not m:
        raise DeployError(what=f"invalid CUDA version {version!r}",
                          remedy="set vms[].stack.cuda.version to MAJOR.MINOR, e.g. \"12.8\"")
    return f"cuda-toolkit-{m.group(1)}-{m.group(2)}"


def _ver(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def compute_capability(pci_id: str) -> tuple[int, int] | None:
    """The GPU's compute capability from :func:`provisioners.gpus.gpu_info` (``(12, 0)`` for
    10de:2d04), or None when the GPU or the table is unknown."""
    try:
        from provisioners import gpus  # noqa: PLC0415 (owned by #6)
        info = gpus.gpu_info(pci_id)
    except (ImportError, AttributeError, LookupError, DeployError):
        return None
    if info is None:
        return None
    for key in ("compute_capability", "compute_cap", "cc"):
        val = info.get(key) if isinstance(info, dict) else getattr(info, key, None)
        if val is None:
            continue
        if isinstance(val, (tuple, list)):
            return int(val[0]), int(val[1])
        return _ver(str(val))
    return None


def min_cuda_for(cc: tuple[int, int] | None) -> tuple[int, int] | None:
    """Lowest CUDA (major, minor) that supports compute capability ``cc``; None if unknown."""
    if cc is None:
        return None
    for floor_cc, cuda in _MIN_CUDA_BY_CC:
        if cc >= floor_cc:
            return cuda
    return None


def table_min_cuda(pci_id: str) -> tuple[int, int] | None:
    """``min_cuda`` of the GPU table row (``"12.8"`` -> ``(12, 8)``), or None."""
    try:
        from provisioners import gpus  # noqa: PLC0415
        info = gpus.gpu_info(pci_id)
    except (ImportError, AttributeError, LookupError, DeployError):
        return None
    val = getattr(info, "min_cuda", None) if info is not None else None
    return _ver(val) if val else None


def check_version(version: str, pci_id: str, cc: tuple[int, int] | None = None) -> None:
    """Raise :class:`DeployError` when CUDA ``version`` cannot target the GPU ``pci_id``
    (``cc`` overrides the GPU table). The floor is the larger of the table's ``min_cuda`` and
    :func:`min_cuda_for` (cc). Pure apart from the GPU-table lookup."""
    cc = cc if cc is not None else compute_capability(pci_id)
    floors = [f for f in (min_cuda_for(cc), table_min_cuda(pci_id)) if f]
    need = max(floors) if floors else None
    if need is None or _ver(version) >= need:
        return
    sm = f"sm_{cc[0]}{cc[1]}" if cc else "this GPU"
    raise DeployError(
        what=f"CUDA {version} cannot build for GPU {pci_id}"
             + (f" (compute capability {cc[0]}.{cc[1]}, {sm})" if cc else ""),
        cause=f"{sm} needs CUDA >= {need[0]}.{need[1]}; older toolkits fail with "
              "'no kernel image is available for execution on the device'",
        remedy=f"set vms[].stack.cuda.version to \"{need[0]}.{need[1]}\" or newer in "
               "infrastructure-catalog.yml")


def parse_nvcc(text: str) -> str | None:
    """``Cuda compilation tools, release 12.8, V12.8.93`` -> ``"12.8"``; None if absent."""
    try:
        from provisioners.parsers import nvcc as nvcc_parser  # noqa: PLC0415 (#6, optional)
        parsed = nvcc_parser.parse(text)
        rel = getattr(parsed, "release", None) if parsed is not None else None
        if rel:
            return str(rel)
    except (ImportError, AttributeError):
        pass
    m = _NVCC_RELEASE.search(text or "")
    return m.group(1) if m else None


def sample_script(version: str) -> str:
    """Bash that runs the first CUDA sample found (see module docstring), printing
    ``@@sample <path>`` then its output; exit 44 when none is installed."""
    paths = " ".join(shlex.quote(p.format(v=version)) for p in SAMPLES)
    return (f"for s in {paths}; do if [ -x \"$s\" ]; then echo \"@@sample $s\"; "
            "cd \"$(dirname \"$s\")\" && exec \"$s\"; fi; done; echo 'no CUDA sample'; exit 44")


def sample_passed(output: str, exit_code: int) -> tuple[bool, str]:
    """(passed, what it proves) for the sample output of :func:`sample_script`."""
    first = (output or "").splitlines()[0] if output else ""
    if "vectorAdd" in first:
        return (exit_code == 0 and "Test PASSED" in output, "vectorAdd: a kernel ran on the GPU")
    if "deviceQuery" in first:
        return (exit_code == 0 and "Result = PASS" in output,
                "deviceQuery: the CUDA runtime sees the GPU")
    return False, "no CUDA sample installed"


class CudaComponent:
    """The ``cuda`` component for one catalog VM (reads ``stack.cuda.version|keyring_url``,
    ``gpu.expected.pci_id``)."""

    name = "cuda"

    def __init__(self, vm: Any, *, install_timeout_s: float = 3600) -> None:
        self.vm = vm
        self.version = str(vm_get(vm, "stack.cuda.version", ""))
        self.keyring_url = str(vm_get(vm, "stack.cuda.keyring_url", ""))
        self.pci_id = str(vm_get(vm, "gpu.expected.pci_id", "")).lower()
        self.install_timeout_s = install_timeout_s

    @property
    def package(self) -> str:
        return toolkit_package(self.version)

    def probes(self) -> dict[str, str]:
        v = self.version
        return {
            "installed": f"{DPKG_QUERY} cuda-keyring 'cuda-toolkit-*' cuda cuda-drivers "
                         "'cuda-drivers-*' 'cuda-runtime-*' 'cuda-demo-suite-*' 2>/dev/null; true",
            "nvcc": f"/usr/local/cuda-{v}/bin/nvcc --version",
            "nvcc_default": "/usr/local/cuda/bin/nvcc --version",
            "cuda_link": "readlink -f /usr/local/cuda",
            "sources": "grep -rls 'developer.download.nvidia.com/compute/cuda' "
                       "/etc/apt/sources.list.d/ 2>/dev/null || true",
        }

    def facts(self, session: Any) -> Facts:
        """Read-only, one round trip: installed CUDA packages, nvcc of the catalog version and
        of ``/usr/local/cuda``, where ``/usr/local/cuda`` points."""
        from provisioners.guest.units import probe  # noqa: PLC0415
        outs = probe(session, self.probes(), sudo=False, timeout_s=120)
        return self.facts_from_outputs({k: (o.exit_code, o.output) for k, o in outs.items()})

    def facts_from_outputs(self, outputs: dict[str, tuple[int, str]]) -> Facts:
        """Pure: :class:`Facts` with ``installed`` (package -> (status, version)),
        ``keyring`` (bool), ``toolkit`` (bool: cuda-toolkit-X-Y configured), ``nvcc_release``
        (e.g. ``"12.8"`` or None), ``default_release``, ``cuda_link``, ``forbidden``
        (installed driver-pulling packages)."""
        get = lambda k: outputs.get(k, (1, ""))  # noqa: E731
        inst = parse_dpkg_query(get("installed")[1])
        v = {
            "installed": inst,
            "keyring": is_installed(inst.get("cuda-keyring", ("un ", ""))[0]),
            "toolkit": is_installed(inst.get(self.package, ("un ", ""))[0]),
            "nvcc_release": parse_nvcc(get("nvcc")[1]) if get("nvcc")[0] == 0 else None,
            "default_release": parse_nvcc(get("nvcc_default")[1])
            if get("nvcc_default")[0] == 0 else None,
            "cuda_link": get("cuda_link")[1].strip(),
            "forbidden": sorted(p for p, (st, _) in inst.items()
                                if FORBIDDEN.match(p) and is_installed(st)),
        }
        return Facts(values=v, raw={k: redact(t) for k, (_, t) in outputs.items()})

    def plan(self, facts: Facts) -> list[Change]:
        """Pure. ``refuse`` when the catalog's version cannot target the GPU (reason has the
        fix), else ``create`` for a missing keyring and/or toolkit; ``[]`` when nvcc of the
        catalog version answers."""
        try:
            package = self.package
            check_version(self.version, self.pci_id)
        except DeployError as exc:
            return [Change("refuse", "cuda", "version", self.version, None,
                           f"{exc.what}: {exc.cause} -- fix: {exc.remedy}")]
        v = facts.values
        changes: list[Change] = []
        if not v["keyring"]:
            changes.append(Change("create", "cuda", "repository", None, "cuda-keyring",
                                  f"NVIDIA CUDA apt repository from {self.keyring_url}"))
        if not v["toolkit"] or v["nvcc_release"] != self.version:
            why = "not installed" if not v["toolkit"] else \
                f"nvcc {self.version} missing or broken (found {v['nvcc_release']})"
            changes.append(Change("create", "cuda", "toolkit", v["nvcc_release"], package, why))
        return changes

    def apply(self, session: Any, facts: Facts, changes: list[Change]) -> list[OpResult]:
        """Install what :meth:`plan` lists (keyring, then toolkit; ``apt-get update`` only
        after a new keyring). Raises :class:`DeployError` for a refusal or a failure."""
        if not changes:
            return [OpResult("cuda", "ok", f"{self.package} installed, nvcc {self.version}")]
        for ch in changes:
            if ch.action == "refuse":
                cause, _, remedy = ch.reason.partition(" -- fix: ")
                raise DeployError(what="cuda step refused", cause=cause, remedy=remedy)
        results = []
        fields = {ch.field for ch in changes}
        if "repository" in fields:
            results.append(self._install_keyring(session))
        if "toolkit" in fields:
            start = time.monotonic()
            pkgs = [self.package]
            demo = f"cuda-demo-suite-{self.package.split('-', 2)[2]}"
            if session.run(f"apt-cache show --no-all-versions {demo} >/dev/null 2>&1",
                           check=False, timeout_s=60).exit_code == 0:
                pkgs.append(demo)  # vectorAdd/deviceQuery for the verify ladder
            assert_allowed(pkgs)
            apt_get(session, "install -y --no-install-recommends " + " ".join(pkgs),
                    timeout_s=self.install_timeout_s)
            results.append(OpResult("cuda toolkit", "changed", f"installed {' + '.join(pkgs)}",
                                    time.monotonic() - start, {"packages": pkgs}))
        return results

    def _install_keyring(self, session: Any) -> OpResult:
        start = time.monotonic()
        if not self.keyring_url.endswith(".deb"):
            raise DeployError(what=f"stack.cuda.keyring_url must name a .deb: {self.keyring_url}",
                              remedy="use NVIDIA's cuda-keyring_*.deb URL for ubuntu2404/x86_64")
        session.run("set -e; d=$(mktemp -d); trap 'rm -rf \"$d\"' EXIT; "
                    + download_sh(self.keyring_url, '"$d/k.deb"') + "; "
                    "dpkg-deb -f \"$d/k.deb\" Package | grep -qx cuda-keyring; "
                    "dpkg -i \"$d/k.deb\"", sudo=True, timeout_s=300, stream=True)
        apt_get(session, "update", timeout_s=900)
        return OpResult("cuda repository", "changed", "installed cuda-keyring, apt-get update",
                        time.monotonic() - start)

    def verify(self, session: Any) -> list[Check]:
        """Read-only: ``nvcc --version`` = the catalog version, no driver-pulling CUDA
        package installed, and a CUDA sample ran (see module docstring)."""
        facts = self.facts(session)
        r = session.run(sample_script(self.version), check=False, timeout_s=300)
        return cuda_checks(facts, self.version, r.stdout + r.stderr, r.exit_code)


def component(catalog: Any, vm: Any, **kwargs: Any) -> CudaComponent:
    """The pipeline's factory: ``component(catalog, vm)`` -> :class:`CudaComponent`."""
    return CudaComponent(vm, **kwargs)


def cuda_checks(facts: Facts, version: str, sample_output: str, sample_exit: int) -> list[Check]:
    """Pure: the CUDA :class:`Check` list (``nvcc --version``, ``CUDA packages``,
    ``CUDA sample``)."""
    v = facts.values
    checks = [
        Check("nvcc --version", v["nvcc_release"] == version, f"release {version}",
              f"release {v['nvcc_release']}" if v["nvcc_release"] else "nvcc not found",
              f"$ /usr/local/cuda-{version}/bin/nvcc --version\n{facts.raw.get('nvcc', '')}\n"
              f"/usr/local/cuda -> {v.get('cuda_link')}"),
        Check("CUDA packages", not v["forbidden"], "no cuda / cuda-drivers meta-package",
              ", ".join(v["forbidden"]) or "none",
              "$ dpkg-query -W cuda-keyring 'cuda-toolkit-*' cuda cuda-drivers ...\n"
              + (facts.raw.get("installed", "").strip() or "(none installed)")),
    ]
    passed, what = sample_passed(sample_output, sample_exit)
    checks.append(Check("CUDA sample", passed, "a kernel ran on the GPU",
                        what if passed else f"failed: {what} (exit {sample_exit})",
                        redact(sample_output[-4000:]) or "(no output)"))
    return checks


__all__ = ["CudaComponent", "component", "table_min_cuda", "assert_allowed", "toolkit_package", "check_version",
           "min_cuda_for", "compute_capability", "parse_nvcc", "cuda_checks", "sample_script",
           "sample_passed", "FORBIDDEN"]
