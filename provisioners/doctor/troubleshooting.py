"""The README's troubleshooting tables, generated from the failure kinds the tool knows.

Two tables, both produced by running the real code, so the documentation cannot drift from it:

- **doctor findings**: one row per id in :data:`~provisioners.doctor.model.FINDINGS`. Each row runs
  :func:`~provisioners.doctor.engine.diagnose` on that id's example in
  :data:`~provisioners.doctor.examples.EXAMPLES` (real corpus captures, lab replays, or a marked
  synthesised line) and shows the finding's evidence (the symptom), cause and remedy.
- **Proxmox VE failures**: one row per kind of :class:`~provisioners.errors.DeployError` the
  deploy side raises around the VM and its GPU, built by the functions that build them in
  ``provisioners/vm/`` and ``provisioners/proxmox.py`` (pre-flight checks, ``_explain`` of a
  failed create/start, the API error and TLS wrappers), fed canned PVE answers instead of a
  network. PVE texts quoted are PVE's own (qemu-server ``PVE/QemuServer/PCI.pm``,
  ``PVE/API2/Qemu.pm``; see ``tests/fixtures/corpus/pve_passthrough_error_texts.md``).

``python -m provisioners doctor --troubleshooting`` prints :func:`markdown_table`; README.md holds
the same text between ``<!-- troubleshooting:begin -->`` and ``<!-- troubleshooting:end -->``
(a test keeps them equal).
"""
from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple

import requests
from proxmoxer.core import ResourceException

from provisioners.doctor.engine import diagnose
from provisioners.doctor.examples import EXAMPLES
from provisioners.doctor.model import FINDINGS
from provisioners.errors import DeployError
from provisioners.proxmox import Credentials, PveClient, PveTaskFailed, PveTaskTimeout
from provisioners.redact import redact
from provisioners.vm.apply import _explain, _stop_on_errors
from provisioners.vm.preflight import check_gpu, check_mapping, check_vmid

__all__ = ["SYMPTOM_CHARS", "FindingRow", "PveRow", "symptom", "finding_rows", "pve_rows", "markdown_table",
           "NO_CREDENTIALS"]

#: longest symptom cell (characters) before it is cut with "..."
SYMPTOM_CHARS = 100

# Log prefixes that say when/where, not what: kernel timestamp, vLLM "(EngineCore_0 pid=N) ERROR
# 11-29 17:24:47 [core.py:632]", Ollama's logfmt "time=... level=INFO source=types.go:50".
_LOG_PREFIX = re.compile(r"^(?:\[\s*\d+\.\d+\]\s*|(?:\(\w+ pid=\d+\)\s*)?(?:DEBUG|INFO|WARNING|ERROR)\s+"
                         r"\d\d-\d\d \d\d:\d\d:\d\d \[[^\]]+\]\s*|time=\S+ level=\w+ source=\S+\s+)")


class FindingRow(NamedTuple):
    """A row of the findings table: ``symptom`` (evidence line, at most :data:`SYMPTOM_CHARS`),
    ``id``, ``cause``, ``remedy`` and the example's ``source``."""

    symptom: str
    id: str
    cause: str
    remedy: str
    source: str


class PveRow(NamedTuple):
    """A row of the Proxmox table: ``pve_text`` (PVE's (or the TLS library's) words, ``""`` when
    the tool finds the problem itself: pre-flight check, settings, a wait that ran out),
    ``reported`` (the DeployError's what + cause as the tool prints them) and ``remedy``."""

    pve_text: str
    reported: str
    remedy: str


def symptom(evidence: str) -> str:
    """First evidence line without its log timestamp prefix, cut to :data:`SYMPTOM_CHARS`."""
    line = (evidence.strip().splitlines() or [""])[0].strip()
    line = _LOG_PREFIX.sub("", line).strip()
    return line if len(line) <= SYMPTOM_CHARS else line[:SYMPTOM_CHARS - 3].rstrip() + "..."


def finding_rows() -> list[FindingRow]:
    """One row per id of FINDINGS (in its order), from ``diagnose`` on the id's first example.

    Raises:
        LookupError: an id has no example, or its example no longer produces that finding
            (the rules changed: fix the example or the rule).
    """
    rows = []
    for fid in FINDINGS:
        example = next((e for e in EXAMPLES if e.id == fid), None)
        if example is None:
            raise LookupError(f"finding {fid} has no example in provisioners/doctor/examples.py")
        found = next((f for f in diagnose({example.capture: example.text}).findings if f.id == fid), None)
        if found is None:
            raise LookupError(f"the example of {fid} ({example.source}) no longer produces it")
        rows.append(FindingRow(symptom(found.evidence), fid, found.cause, found.remedy, example.source))
    return rows


# ------------------------------------------------------------------------------ Proxmox side

NODE = "pve1"
#: the catalog VM of the examples (infrastructure-catalog.yml's vm-llm-aimachine)
_VM = SimpleNamespace(vmid=140, name="vm-llm-aimachine", gpu=SimpleNamespace(
    address="0000:01:00", mapping="rtx5060ti", pcie=True,
    expected=SimpleNamespace(pci_id="10de:2d04", name="NVIDIA GeForce RTX 5060 Ti")))
_TOKEN = Credentials(user="deployer@pve", token_name="deploy", token_secret=None)
_GPU_FUNCTIONS = [  # GET /nodes/{node}/hardware/pci rows of the RTX 5060 Ti (corpus lspci, IOMMU group 14)
    {"id": "0000:01:00.0", "class": "0x030000", "vendor": "0x10de", "device": "0x2d04",
     "device_name": "GB206 [GeForce RTX 5060 Ti]", "iommugroup": 14},
    {"id": "0000:01:00.1", "class": "0x040300", "vendor": "0x10de", "device": "0x22eb",
     "device_name": "GB206 High Definition Audio Controller", "iommugroup": 14},
]
_UPID = "UPID:pve1:0003A1F2:0012D4E6:674A1B2C:qmstart:140:deployer@pve!deploy:"


class _CannedPve:
    """Stands in for :class:`~provisioners.proxmox.PveClient` in the read-only checks: GETs are
    answered from ``answers`` (API path -> PVE ``data``), privileges from ``privileges``; no I/O."""

    def __init__(self, answers: dict[str, Any] | None = None, privileges: frozenset = frozenset(),
                 credentials: Credentials = _TOKEN) -> None:
        self.node = NODE
        self.endpoint = "https://pve.example.org:8006"
        self.credentials = credentials
        self.answers = answers or {}
        self.privileges = privileges

    def get(self, path: str, /, **params: Any) -> Any:
        return self.answers.get(path)

    def has_privilege(self, path: str, privilege: str) -> bool:
        return (path, privilege) in self.privileges


def _preflight_error(check: Callable[[], list]) -> DeployError:
    """The DeployError ``apply_vm`` raises for these pre-flight findings."""
    try:
        _stop_on_errors(_VM, check())
    except DeployError as err:
        return err
    raise LookupError("the pre-flight check found no error")  # the check changed: fix the row


def _start_failed(exitstatus: str) -> DeployError:
    """The DeployError of a start task that PVE ended with ``exitstatus`` (``_create_and_start``)."""
    err = PveTaskFailed(f"start of VM {_VM.vmid} failed", _UPID, exitstatus, [f"TASK ERROR: {exitstatus}"],
                        command=f"POST /nodes/{NODE}/qemu/{_VM.vmid}/status/start")
    return _explain(err, _VM, _CannedPve(), f"VM {_VM.vmid} ({_VM.name}) could not be deployed")


def _create_refused(status: int, message: str) -> DeployError:
    """The DeployError of a create PVE refused with HTTP ``status`` and ``message`` (proxmoxer's
    ResourceException carries PVE's message as its content)."""
    err = PveClient._api_error("POST", f"/nodes/{NODE}/qemu",
                               ResourceException(status, "Internal Server Error", message))
    explained = _explain(err, _VM, _CannedPve(), f"VM {_VM.vmid} ({_VM.name}) could not be created")
    explained.cause += f"\n  nothing was created (VMID {_VM.vmid} is still free)"
    return explained


#: What :func:`provisioners.proxmox.credentials_from_env` raises with no PROXMOX_* variable set
#: (a test compares it with the real call).
NO_CREDENTIALS = DeployError(
    "no Proxmox credentials", cause="PROXMOX_USER is not set",
    remedy="set PROXMOX_USER (e.g. deployer@pve) and either PROXMOX_TOKEN_NAME + PROXMOX_TOKEN_SECRET "
           "(API token) or PROXMOX_PASSWORD (root@pam ticket login); see README.md")

#: PVE texts (qemu-server PCI.pm / API2/Qemu.pm wording, as the lab replays them)
PVE_IOMMU = "cannot prepare PCI pass-through, IOMMU not present"
PVE_RAW_PCI = "only root can set 'hostpci0' config for non-mapped devices"
PVE_NO_DEVICE = "no PCI device found for '0000:01:00.0'"
PVE_IN_USE = "PCI device '0000:01:00.0' already in use by VMID '141'"
#: OpenSSL's verify error for PVE's self-signed CA, as Python's ssl module words it
TLS_TEXT = ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in "
            "certificate chain")


def _pve_errors() -> list[tuple[str, DeployError]]:
    iommu_off = [dict(d, iommugroup=-1) for d in _GPU_FUNCTIONS]
    hw = f"/nodes/{NODE}/hardware/pci"
    mapping = [{"id": "rtx5060ti", "map": [f"node={NODE},path=0000:01:00,id=10de:2d04,iommugroup=14"]}]
    foreign = {"/cluster/resources": [{"vmid": 140, "node": NODE, "type": "qemu", "name": "win11-gaming",
                                       "status": "stopped"}],
               f"/nodes/{NODE}/qemu/140/config": {"name": "win11-gaming"},
               f"/nodes/{NODE}/qemu/140/pending": [], f"/nodes/{NODE}/qemu/140/status/current": {"status": "stopped"}}
    tls = PveClient._tls_error(_CannedPve(), requests.exceptions.SSLError(TLS_TEXT + " (_ssl.c:1006)"))
    return [
        (PVE_IOMMU, _preflight_error(lambda: check_gpu(_CannedPve({hw: iommu_off}), _VM))),
        ("", _preflight_error(lambda: check_gpu(_CannedPve({hw: []}), _VM))),
        (PVE_NO_DEVICE, _start_failed(PVE_NO_DEVICE)),
        (PVE_IN_USE, _start_failed(PVE_IN_USE)),
        (PVE_RAW_PCI, _create_refused(500, PVE_RAW_PCI)),
        ("", _preflight_error(lambda: check_mapping(
            _CannedPve({"/cluster/mapping/pci": mapping}), _VM))),
        ("", _preflight_error(lambda: check_vmid(_CannedPve(foreign), _VM)[0])),
        ("", PveTaskTimeout(f"start of VM {_VM.vmid} did not finish in time", _UPID, 600,
                            command=f"POST /nodes/{NODE}/qemu/{_VM.vmid}/status/start")),
        ("", NO_CREDENTIALS),
        (TLS_TEXT, tls),
    ]


def _flat(text: str) -> str:
    return " ".join(x.strip() for x in text.splitlines() if x.strip())


def pve_rows() -> list[PveRow]:
    """One row per DeployError kind around the VM and its GPU (see the module docstring)."""
    rows = []
    for pve_text, err in _pve_errors():
        reported = err.what + (f": {_flat(err.cause)}" if err.cause else "")
        rows.append(PveRow(pve_text, reported, err.remedy))
    return rows


# ------------------------------------------------------------------------------ Markdown

def _cell(text: str, code: bool = False) -> str:
    """A Markdown table cell: lines joined by <br>, pipes escaped; ``code`` wraps it in backticks."""
    lines = [x.strip() for x in redact(text).splitlines() if x.strip()]
    if code and lines and not any("`" in x for x in lines):
        lines = [f"`{x}`" for x in lines]
    return "<br>".join(lines).replace("|", "\\|")


def markdown_table() -> str:
    """The README troubleshooting section (Markdown, ends without a newline; redacted).

    Raises:
        LookupError: see :func:`finding_rows`.
    """
    out = ["Findings of `python -m provisioners doctor` (it reads captured outputs: `--from TRANSCRIPT`, "
           "a capture directory, `--local` or `--ssh USER@HOST`). The symptom is quoted from a real capture "
           "(`tests/fixtures/corpus/`), the lab's replay or, where marked in `provisioners/doctor/examples.py`, "
           "a synthesised line.",
           "",
           "| symptom you see | finding id | cause | remedy |",
           "|---|---|---|---|"]
    for r in finding_rows():
        out.append(f"| {_cell(r.symptom, code=True)} | `{r.id}` | {_cell(r.cause)} | {_cell(r.remedy)} |")
    out += ["",
            "Proxmox VE failures the deployer explains (`make plan` / `make deploy-vm-llm-aimachine`; "
            "examples for VM 140 and the RTX 5060 Ti at `0000:01:00`). A `-` for the PVE text: the tool found "
            "the problem itself (pre-flight check before any change, settings, a wait that ran out).",
            "",
            "| PVE text | the tool reports | remedy |",
            "|---|---|---|"]
    for r in pve_rows():
        out.append(f"| {_cell(r.pve_text, code=True) or '-'} | {_cell(r.reported)} | {_cell(r.remedy)} |")
    return redact("\n".join(out))
