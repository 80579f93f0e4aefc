"""Doctor: turn what a GPU LLM host prints into findings (cause + remedy), offline.

Inputs are *captures*: ``name -> text`` where the name says which command printed the text
(``nvidia-smi``, ``dmesg``, ``ubuntu-drivers``, ``lspci``, ``nvcc``, ``journal-ollama``,
``ollama``, ``vllm``, ``modinfo``, ``mokutil``, ``pve``, ``torch``, ``proc-driver``; file
suffixes and extra words are allowed: ``nvidia-smi.txt``, ``dmesg_boot2.log``). A capture may
itself be a pasted terminal transcript: every line starting with ``$ `` opens a new section whose
command is recognised by its first word(s) (``sudo`` and paths stripped); sections of unknown
commands are ignored. See :func:`capture_kind`, :func:`command_kind`, :func:`split_transcript`.

Library use (deploy steps call this on failure and attach the findings to the report)::

    diag = diagnose({"nvidia-smi": out1, "dmesg": out2})
    diag.findings            # [Finding(id, severity, evidence, cause, remedy)]
    diag.to_dict() / diag.to_json() / diag.format_text()

    diag = diagnose(collect_session(session))   # live, read-only probes over a RemoteSession

CLI: ``python -m provisioners doctor DIR | --from TRANSCRIPT | --local | --ssh user@host
[--json]``. Exit status: 0 no finding, 3 at least one finding, 1 operator error.

Finding ids are stable (tests and users rely on them); see :data:`FINDINGS`. Benign kernel
lines (``module verification failed ... tainting kernel``, ``LTR ... disabled``) give no finding;
a healthy capture gives none. Unknown values are ``None`` in the output, never guessed.
"""
from __future__ import annotations

from provisioners.doctor.captures import capture_kind, command_kind, sniff_kinds, split_transcript
from provisioners.doctor.cli import add_arguments, run
from provisioners.doctor.engine import diagnose
from provisioners.doctor.live import LIVE_COMMANDS, collect, collect_session, local_runner, ssh_runner
from provisioners.doctor.model import EXIT_FINDINGS, FINDINGS, Diagnosis, Finding, GpuSummary

__all__ = ["Finding", "GpuSummary", "Diagnosis", "FINDINGS", "EXIT_FINDINGS", "diagnose", "split_transcript",
           "capture_kind", "command_kind", "sniff_kinds", "collect", "collect_session", "local_runner",
           "ssh_runner", "LIVE_COMMANDS", "add_arguments", "run"]
