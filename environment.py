"""behave hooks: target selection, the lab, reports, redaction, progress, diagnosis on failure.

User data (``-D name=value``; defaults in behave.ini ``[behave.userdata]``):
  target=lab|proxmox   where to deploy (default ``lab``: the embedded lab, started on demand)
  catalog=PATH         the catalog (default ``lab/lab-catalog.yml`` for lab,
                       ``infrastructure-catalog.yml`` for proxmox)
  vm=NAME|VMID         the catalog entry to act on (default ``vm-llm-aimachine``)
  gpu_profile=NAME     lab GPU profile (``rtx5060ti``, ``secure-boot``, ``driver-install-fails``...)
  insecure=true        skip TLS verification of the PVE API (prints a warning)

Reports: importing this file creates ``reports/<UTC timestamp>/`` and points ``reports/latest``
at it - behave opens the report files named in behave.ini (``reports/latest/...``) right after
importing this file and before any hook runs (see provisioners/report.py).
"""
from __future__ import annotations

import atexit
import logging
import os
import sys

from provisioners import progress as progress_mod
from provisioners import report
from provisioners.errors import DeployError
from provisioners.pipeline import LAB_VLLM_API_KEY, Deployment, require
from provisioners.redact import redact, register_secret

RUN_DIR = report.prepare_run_dir()
# The terminal behave was started from; behave's capture swaps sys.stdout during steps, progress
# must still reach the operator live.
_CONSOLE = report.RedactingStream(sys.stdout)
sys.stdout = report.RedactingStream(sys.stdout)
sys.stderr = report.RedactingStream(sys.stderr)
atexit.register(report.redact_tree, RUN_DIR)

#: environment variables always treated as secrets, also when provisioners.secrets is absent
SECRET_ENV = ("PROXMOX_TOKEN_SECRET", "PROXMOX_PASSWORD", "VLLM_API_KEY", "HF_TOKEN", "LAB_PVE_PASSWORD")


def _redact_log_records() -> None:
    """Redact every log record where it is made, whichever handler (behave's log capture,
    JUnit, a file) ends up writing it."""
    base = logging.getLogRecordFactory()
    if getattr(base, "_deployer_redacting", False):
        return

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logger's problem, not ours
            return record
        record.msg, record.args = redact(message), ()
        return record

    factory._deployer_redacting = True
    logging.setLogRecordFactory(factory)


def _register_secrets() -> None:
    for name in SECRET_ENV:
        register_secret(os.environ.get(name))
    try:
        secrets = require("provisioners.secrets", "issue #2, secrets")
    except NotImplementedError:
        return
    secrets.register_env_secrets()


def before_all(context):
    userdata = context.config.userdata
    if userdata.get("target", "lab") == "lab":
        # vLLM's /v1 must be guarded by a key (provisioners.guest.vllm); the lab uses a fixed one
        os.environ.setdefault("VLLM_API_KEY", LAB_VLLM_API_KEY)
    _register_secrets()
    _redact_log_records()
    report.wrap_formatter_streams(list(getattr(context._runner, "formatters", []) or []))
    report.pin_junit_directory(context.config, RUN_DIR)
    context.progress = progress_mod.Progress(_CONSOLE)
    context.run_dir = RUN_DIR
    target = userdata.get("target", "lab")
    context.deployment = Deployment(
        target=target,
        catalog_path=userdata.get("catalog") or None,
        vm_name=userdata.get("vm", "vm-llm-aimachine"),
        insecure=userdata.getbool("insecure", False),
        gpu_profile=userdata.get("gpu_profile") or None,
        progress=context.progress,
        hold_guest_lock=True,
    )
    context.progress.line(f"target {target}, catalog {context.deployment.catalog_path}, reports {RUN_DIR}")


def before_scenario(context, scenario):
    context.deployment.begin_scenario(scenario.name)
    context.error = None
    if "lab" in scenario.effective_tags and context.deployment.target != "lab":
        scenario.skip("needs the lab (-D target=lab)")
        return
    context.progress.line(f"== {scenario.name}")


def before_step(context, step):
    context.progress.step_started(f"{step.keyword} {step.name}")


def after_step(context, step):
    deployment = context.deployment
    for name, text, mime in deployment.take_evidence():
        report.attach(context, name, text, mime)
    if step.status.has_failed():
        _explain_failure(context, step)
    context.progress.step_finished(f"{step.keyword} {step.name}", step.status.name, step.duration)


def _explain_failure(context, step) -> None:
    """Redact the error shown by every formatter, attach the failed command's evidence, and
    ask the doctor about what was captured so far."""
    if step.error_message:
        step.error_message = redact(step.error_message)
    err = step.exception
    captures = dict(context.deployment.captures)
    if isinstance(err, DeployError):
        for name, text in (err.evidence or {}).items():
            report.attach(context, f"failure evidence: {name}", text)
        captures.update(err.evidence or {})
    if not captures:
        return
    try:
        doctor = require("provisioners.doctor", "issue #6, doctor")
        diagnosis = doctor.diagnose(captures)
    except NotImplementedError:
        return
    except Exception as exc:  # noqa: BLE001 - diagnosis must never hide the original failure
        report.attach(context, "doctor (failed)", f"{type(exc).__name__}: {exc}")
        return
    text = str(diagnosis).strip()
    if text:
        report.attach(context, "doctor: findings", text)
        context.progress.line(f"   doctor: {text.splitlines()[0]}")


def after_scenario(context, scenario):
    deployment = context.deployment
    deployment.end_scenario()
    records = deployment.results_of(scenario.name)
    context.progress.add_row(progress_mod.Row(
        scenario.name, scenario.status.name, scenario.duration,
        changed=sum(r.result.status == "changed" for r in records),
        ok=sum(r.result.status == "ok" for r in records),
        failed=sum(r.result.status == "failed" for r in records)))
    components: dict[str, list] = {}
    for r in records:
        components.setdefault(r.component, []).append(r.result)
    for name, results in components.items():
        statuses = [r.status for r in results]
        worst = "failed" if "failed" in statuses else "changed" if "changed" in statuses else "ok"
        context.progress.add_row(progress_mod.Row(
            name, worst, sum(r.duration_s for r in results), changed=statuses.count("changed"),
            ok=statuses.count("ok"), failed=statuses.count("failed"), indent=1))


def after_all(context):
    deployment = getattr(context, "deployment", None)
    if deployment is not None:
        deployment.close()
        deployment.stop_lab()
    if hasattr(context, "progress"):
        context.progress.print_summary()
        context.progress.line(f"reports: {RUN_DIR}")
    report.redact_tree(RUN_DIR)

