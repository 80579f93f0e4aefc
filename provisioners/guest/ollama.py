"""Guest component ``ollama``: Ollama from a pinned release tarball, served by systemd.

Shape (see :mod:`provisioners.guest.base`): ``facts`` (one batched round trip) -> ``plan``
(pure) -> ``apply`` (each step ``changed`` or ``ok``) -> ``verify`` (read-only).

It does what Ollama's own ``install.sh`` does, minus ``curl | sh`` and minus its driver
install (the script installs NVIDIA's ``cuda-drivers`` when nvidia-smi is missing, which would
pull a driver over ours - DESIGN.md section 4; so ``plan`` refuses while nvidia-smi fails):

- download the catalog's tarball URL inside the guest and check its sha256 BEFORE extracting;
  a mismatch is refused showing both hashes;
- install ``bin/ollama`` and ``lib/ollama`` under ``/usr/local`` (libraries first, the binary
  last, so an interrupted install is seen as "old version" and redone) only when
  ``ollama --version`` reports another version;
- system user ``ollama`` (home ``/usr/share/ollama``, as install.sh) in the ``render`` and
  ``video`` groups when they exist (GPU device nodes);
- ``ollama.service`` from ``templates/ollama.service.j2`` and the drop-in
  ``ollama.service.d/override.conf`` with ``Environment="OLLAMA_HOST=<bind>"``; enabled;
  restarted only when the binary, unit or drop-in changed;
- GPU use from the server log: ``msg="inference compute" ... library=CUDA`` (``cuda`` before
  0.12); ``library=cpu`` is a CPU fallback, cured by restarting Ollama once the driver works
  (corpus ollama_journal_gpu_discovery_lines.txt, case (g)).
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from typing import Any, Callable

from provisioners.errors import DeployError
from provisioners.guest import bootstrap, units, vram
from provisioners.guest.base import Check, Facts
from provisioners.parsers import ollama as parse
from provisioners.redact import redact
from provisioners.results import Change, OpResult
from provisioners.verify import ladder_step

USER = "ollama"
HOME = "/usr/share/ollama"
PREFIX = "/usr/local"
BINARY = f"{PREFIX}/bin/ollama"
UNIT = "ollama.service"
UNIT_PATH = "/etc/systemd/system/ollama.service"
OVERRIDE_PATH = "/etc/systemd/system/ollama.service.d/override.conf"
CACHE_DIR = "/var/cache/gpu-llm-deployer"
GPU_GROUPS = ("render", "video")
PLACEHOLDER_SHA256 = "0" * 64
# Seconds to wait for the API after a (re)start and for the "inference compute" log line.
API_WAIT_S = 90.0
GPU_LINE_WAIT_S = 60.0
POLL_S = 2.0

CPU_REMEDY = ("Ollama fell back to the CPU: it started before the NVIDIA driver/CUDA was usable. "
              "Check that `nvidia-smi` works on the VM, then `sudo systemctl restart ollama` and "
              "look for `inference compute ... library=CUDA` in `journalctl -u ollama`")


@dataclass(frozen=True)
class OllamaSettings:
    """The catalog's Ollama settings. ``bind``: ``HOST:PORT`` (OLLAMA_HOST); ``vram_mib``: MiB."""

    version: str
    url: str
    sha256: str
    bind: str
    vram_mib: int

    @classmethod
    def from_vm(cls, vm: Any) -> "OllamaSettings":
        c = vm.stack.ollama
        return cls(version=str(c.version), url=str(c.url), sha256=str(c.sha256).lower(),
                   bind=str(c.bind), vram_mib=int(c.vram_mib))

    @property
    def connect_host_port(self) -> str:
        """Where a client INSIDE the guest reaches the server: a wildcard bind (``0.0.0.0``,
        ``::``, empty) is reached on 127.0.0.1."""
        host, _, port = self.bind.rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def tarball_name(self) -> str:
        """The file name of the download in the guest's cache (version-stamped)."""
        base = self.url.rstrip("/").rsplit("/", 1)[-1] or "ollama.tgz"
        return f"ollama-{self.version}-{base}"


class OllamaComponent:
    """The ``ollama`` guest component for one catalog VM. ``sleep`` / ``clock``: injectable
    for tests."""

    name = "ollama"

    def __init__(self, vm: Any, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.vm = vm
        self.settings = OllamaSettings.from_vm(vm)
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_catalog(cls, vm: Any, **kwargs: Any) -> "OllamaComponent":
        """Same as the constructor (Ollama needs no secrets); symmetric with vLLM."""
        return cls(vm, **kwargs)

    # -- desired state --------------------------------------------------------------------------

    def unit_text(self) -> str:
        return units.render("ollama.service.j2", prefix=PREFIX, user=USER)

    def override_text(self) -> str:
        return units.render("ollama-override.conf.j2", bind=self.settings.bind)

    def _cli(self, args: str) -> str:
        return f"OLLAMA_HOST={shlex.quote(self.settings.connect_host_port)} {BINARY} {args}"

    # -- facts ----------------------------------------------------------------------------------

    def probes(self) -> dict[str, str]:
        """Read-only probes ``facts`` batches into one round trip (run as root)."""
        return {
            "nvidia_smi": "nvidia-smi -L",
            "curl": f"{bootstrap.DPKG_QUERY} curl",
            "user": f"getent passwd {USER}",
            "groups": f"id -nG {USER}",
            "gpu_groups": "getent group " + " ".join(GPU_GROUPS) + " | cut -d: -f1",
            "version": self._cli("--version"),
            "unit": f"sha256sum {UNIT_PATH}",
            "override": f"sha256sum {OVERRIDE_PATH}",
            "service": units.show_command(UNIT),
        }

    def parse_facts(self, raw: dict[str, units.ProbeOutput]) -> Facts:
        """Pure: probe outputs -> :class:`Facts` values ``nvidia_smi_ok`` (bool),
        ``nvidia_smi`` (its text), ``curl`` (installed), ``user`` (bool), ``groups_missing``
        (GPU groups that exist but the user is not in), ``version`` (installed client version
        or None), ``unit_sha`` / ``override_sha`` (hex|None), ``service`` (ServiceState)."""
        v: dict[str, Any] = {}
        smi = raw["nvidia_smi"]
        v["nvidia_smi_ok"] = smi.ok and "GPU " in smi.output
        v["nvidia_smi"] = smi.output
        curl = bootstrap.parse_dpkg_query(raw["curl"].output).get("curl", ("", ""))
        v["curl"] = bootstrap.is_installed(curl[0])
        v["user"] = raw["user"].ok and raw["user"].output.startswith(f"{USER}:")
        member = set(raw["groups"].output.split()) if raw["groups"].ok else set()
        existing = [g for g in raw["gpu_groups"].output.split() if g in GPU_GROUPS]
        v["groups_missing"] = [g for g in existing if g not in member]
        version = parse.parse_version_output(raw["version"].output) if raw["version"].ok \
            else None
        v["version"] = version.client_version if version else None
        v["unit_sha"] = units.probe_sha256(raw["unit"])
        v["override_sha"] = units.probe_sha256(raw["override"])
        v["service"] = units.parse_show(UNIT, raw["service"].output)
        return Facts(values=v, raw={k: p.output for k, p in raw.items()})

    def facts(self, session: Any) -> Facts:
        """Probe the guest (one round trip, read-only)."""
        return self.parse_facts(units.probe(session, self.probes()))

    # -- plan -----------------------------------------------------------------------------------

    def plan(self, facts: Facts) -> list[Change]:
        """Pure: what would change and why; ``[]`` = converged. Refuses while nvidia-smi does not
        work (the driver comes first), and a placeholder sha256 when a download is needed."""
        v = facts.values
        s = self.settings
        changes: list[Change] = []
        if getattr(self.vm.stack, "vllm", None) is None:  # else vLLM's plan checks the budget
            changes += vram.plan_budget(self.vm)
        if not v["nvidia_smi_ok"]:
            first = (v["nvidia_smi"].strip().splitlines() or ["no output"])[0]
            changes.append(Change(
                "refuse", "ollama", "driver", first[:200], "nvidia-smi lists the GPU",
                "the NVIDIA driver must work before Ollama is installed (Ollama needs it to "
                "use the GPU); run the driver step first, reboot if it asks, then re-run"))
        if not v["curl"]:
            changes.append(Change("create", "ollama", "apt packages", None, "curl",
                                  "downloads the release tarball"))
        if not v["user"]:
            changes.append(Change("create", "ollama", "user", None, USER,
                                  f"system user, home {HOME}"))
        elif v["groups_missing"]:
            changes.append(Change("update", "ollama", "groups", None,
                                  " ".join(v["groups_missing"]), "access to the GPU devices"))
        restart: list[str] = []
        if v["version"] != s.version:
            if s.sha256 == PLACEHOLDER_SHA256:
                changes.append(Change(
                    "refuse", "ollama", "sha256", s.sha256, "the tarball's real sha256",
                    "vms[].stack.ollama.sha256 is the all-zero placeholder; put the sha256 of "
                    f"{s.url} (the release's sha256sum.txt) in the catalog"))
            changes.append(Change("create" if v["version"] is None else "update", "ollama",
                                  "version", v["version"], s.version, f"tarball {s.url}"))
            restart.append("version")
        for field, key, path, text in (("unit", "unit_sha", UNIT_PATH, self.unit_text()),
                                       ("override", "override_sha", OVERRIDE_PATH,
                                        self.override_text())):
            if v[key] != units.sha256_text(text):
                changes.append(Change("create" if v[key] is None else "update", "ollama", field,
                                      None if v[key] is None else "differs", path,
                                      f"OLLAMA_HOST={s.bind}" if field == "override"
                                      else "rendered from the catalog"))
                restart.append(field)
        changes.extend(units.plan_service("ollama", v["service"], restart))
        return changes

    # -- apply ----------------------------------------------------------------------------------

    def apply(self, session: Any, facts: Facts, changes: list[Change]) -> list[OpResult]:
        """Carry out the plan check-then-act; then wait for ``/api/version`` and require the
        GPU (``library=CUDA``) in the server log, restarting Ollama once on a CPU fallback.

        Raises :class:`DeployError` on a ``refuse`` change (nothing is done), a sha256 mismatch
        (both hashes shown, nothing extracted), a failing command, or a CPU fallback that a
        restart did not cure.
        """
        refusals = [c for c in changes if c.action == "refuse"]
        if refusals:
            raise DeployError(what="Ollama plan refused",
                              cause="; ".join(c.reason for c in refusals),
                              remedy="do what the reason says, then re-run")
        v = facts.values
        results: list[OpResult] = []
        if not v["curl"]:
            start = time.monotonic()
            units.apt_install(session, ["curl"])
            results.append(OpResult("apt curl", "changed", "installed", time.monotonic() - start))
        results.append(self._ensure_user(session, v))
        version = self._ensure_version(session, v["version"])
        results.append(version)
        unit = units.install_file(session, UNIT_PATH, self.unit_text())
        override = units.install_file(session, OVERRIDE_PATH, self.override_text())
        results += [unit, override]
        if unit.changed or override.changed:
            results.append(units.daemon_reload(session))
        service: units.ServiceState = v["service"]
        results.append(units.ensure_enabled(session, service))
        reasons = [n for n, r in (("version", version), ("unit", unit), ("override", override))
                   if r.changed]
        results.append(units.ensure_running(session, service, restart_reasons=reasons))
        results.append(self.wait_api(session))
        results += self.ensure_gpu(session)
        return results

    def _ensure_user(self, session: Any, v: dict[str, Any]) -> OpResult:
        start = time.monotonic()
        if v["user"] and not v["groups_missing"]:
            return OpResult(f"user {USER}", "ok", "exists")
        cmd = ""
        if not v["user"]:
            cmd = (f"useradd --system --user-group --create-home --home-dir {HOME} "
                   f"--shell /bin/false {USER}; ")
        # Groups are re-checked on the guest: they may exist only after the driver install.
        cmd += (f"for g in {' '.join(GPU_GROUPS)}; do if getent group $g >/dev/null; then "
                f"usermod -a -G $g {USER} || exit 1; fi; done")
        units.run_checked(session, "set -e; " + cmd, what=f"creating the user {USER} failed",
                          remedy="check useradd/usermod's message above")
        what = "created" if not v["user"] else "added to " + " ".join(v["groups_missing"])
        return OpResult(f"user {USER}", "changed", what, time.monotonic() - start)

    def download_command(self) -> str:
        """Shell: fetch the tarball into the cache unless a file with the right hash is there;
        print ``sha256sum`` of what is there. Never extracts."""
        s = self.settings
        f = shlex.quote(f"{CACHE_DIR}/{s.tarball_name}")
        # `set -e -o pipefail` and no `&&` list: a failed download must fail the command,
        # not end in the hash of nothing.
        return (f"set -e -o pipefail; mkdir -p {CACHE_DIR}; f={f}; "
                f"if [ ! -f \"$f\" ] || [ \"$(sha256sum < \"$f\" | cut -d' ' -f1)\" != "
                f"{shlex.quote(s.sha256)} ]; then "
                f"curl -fsSL --retry 3 --connect-timeout 30 -o \"$f.part\" {shlex.quote(s.url)}; "
                f"mv -f \"$f.part\" \"$f\"; fi; sha256sum < \"$f\" | cut -d' ' -f1")

    def install_command(self) -> str:
        """Shell: extract the (already checked) tarball to a staging directory, then replace
        ``lib/ollama`` and last ``bin/ollama``; remove the staging directory and tarball."""
        f = shlex.quote(f"{CACHE_DIR}/{self.settings.tarball_name}")
        stage = f"{CACHE_DIR}/ollama-stage"
        return (f"set -e; rm -rf {stage}; mkdir -p {stage}; tar -C {stage} -xf {f}; "
                f"test -x {stage}/bin/ollama; "
                f"rm -rf {PREFIX}/lib/ollama; mkdir -p {PREFIX}/lib {PREFIX}/bin; "
                f"if [ -d {stage}/lib/ollama ]; then mv {stage}/lib/ollama {PREFIX}/lib/ollama; fi; "
                f"install -m 0755 {stage}/bin/ollama {BINARY}.new; mv -f {BINARY}.new {BINARY}; "
                f"rm -rf {stage} {f}")

    def _ensure_version(self, session: Any, installed: str | None) -> OpResult:
        start = time.monotonic()
        s = self.settings
        if installed == s.version:
            return OpResult(f"ollama {s.version}", "ok", "installed")
        result = units.run_checked(session, self.download_command(),
                                   what=f"downloading the Ollama tarball {s.url} failed",
                                   remedy="check vms[].stack.ollama.url and the guest's network",
                                   timeout_s=3600, stream=False)
        got = (result.stdout.strip().splitlines() or [""])[-1].strip()
        if not check_sha256_ok(got, s.sha256):
            # Drop the bad download so nothing can extract it later; then refuse.
            session.run(f"rm -f {shlex.quote(f'{CACHE_DIR}/{s.tarball_name}')}", sudo=True,
                        timeout_s=60, check=False)
            check_sha256(got, s.sha256, s.url)
        units.run_checked(session, self.install_command(),
                          what="extracting the Ollama tarball failed",
                          remedy="check free disk space under /usr/local and /var/cache",
                          timeout_s=1800)
        return OpResult(f"ollama {s.version}", "changed",
                        f"installed from {s.url} (sha256 ok; was {installed or 'absent'})",
                        time.monotonic() - start)

    # -- readiness and GPU ------------------------------------------------------------------------

    def _api_probe(self) -> str:
        url = shlex.quote(f"http://{self.settings.connect_host_port}/api/version")
        return f"curl -sS --max-time 10 {url}"

    def wait_api(self, session: Any) -> OpResult:
        """Poll ``GET /api/version`` inside the guest until it answers (up to API_WAIT_S s).
        Raises :class:`DeployError` with the journal tail otherwise."""
        start = self._clock()
        while True:
            r = session.run(self._api_probe(), sudo=False, timeout_s=30, check=False)
            version = parse.parse_api_version(r.stdout) if r.exit_code == 0 else None
            if version:
                return OpResult(f"{UNIT} api", "ok", f"/api/version {version}",
                                self._clock() - start)
            if self._clock() - start >= API_WAIT_S:
                raise DeployError(
                    what=f"Ollama's API did not answer on {self.settings.connect_host_port}",
                    cause=redact((r.stdout + r.stderr).strip()[-500:]) or "no answer",
                    remedy="read the journal; check vms[].stack.ollama.bind (HOST:PORT)",
                    evidence={f"journalctl -u {UNIT}": redact(units.journal_tail(session, UNIT))},
                    command=self._api_probe(), exit_code=r.exit_code)
            self._sleep(POLL_S)

    def journal_command(self) -> str:
        """Shell (root): discovery lines of the CURRENT run of the unit."""
        return units.invocation_journal_command(
            UNIT, "inference compute|skipping|no compatible GPUs")

    def gpu_lines(self, session: Any) -> str:
        return session.run(self.journal_command(), sudo=True, timeout_s=60, check=False).stdout

    def ensure_gpu(self, session: Any) -> list[OpResult]:
        """Wait for the ``inference compute`` line; on ``library=cpu`` restart Ollama ONCE
        (corpus case (g): CUDA was not ready when it started) and look again.
        Raises :class:`DeployError` when it stays on the CPU or never logs the line."""
        results: list[OpResult] = []
        for attempt in (1, 2):
            text = self._wait_gpu_line(session)
            check = gpu_check(text)
            if check.passed:
                results.append(OpResult(f"{UNIT} gpu", "ok", check.actual))
                return results
            if attempt == 1 and "library=cpu" in check.actual:
                start = time.monotonic()
                units.run_checked(session, f"systemctl restart {UNIT}",
                                  what=f"restarting {UNIT} failed",
                                  remedy=f"read `journalctl -u {UNIT}`")
                results.append(OpResult(f"run {UNIT}", "changed",
                                        "restarted: CPU fallback (library=cpu) while the driver "
                                        "works", time.monotonic() - start))
                self.wait_api(session)
                continue
            break
        raise DeployError(what="Ollama does not use the GPU", cause=check.actual,
                          remedy=CPU_REMEDY, evidence={"inference compute lines": text})

    def _wait_gpu_line(self, session: Any) -> str:
        start = self._clock()
        while True:
            text = self.gpu_lines(session)
            if parse.parse_inference_compute(text) or self._clock() - start >= GPU_LINE_WAIT_S:
                return text
            self._sleep(POLL_S)

    # -- verify -----------------------------------------------------------------------------------

    def verify_probes(self) -> dict[str, str]:
        """Read-only probes of :meth:`verify` (one round trip, as root for the journal)."""
        return {
            "service": units.show_command(UNIT),
            "version": self._cli("--version"),
            "list": self._cli("list"),
            "api_version": self._api_probe(),
            "gpu": self.journal_command(),
        }

    def verify(self, session: Any) -> list[Check]:
        """Checks: unit active + enabled; ``ollama --version`` is the catalog version with no
        "could not connect" warning; ``ollama list`` works; ``GET /api/version``; the GPU in
        the server log (``library=CUDA``)."""
        return self.checks_from(units.probe(session, self.verify_probes(), timeout_s=120))

    def checks_from(self, out: dict[str, units.ProbeOutput]) -> list[Check]:
        """Pure: verify probe outputs -> checks."""
        s = self.settings
        checks = units.service_checks(units.parse_show(UNIT, out["service"].output))
        text = out["version"].output
        ver = parse.parse_version_output(text)
        ok = (out["version"].ok and ver.server_reachable and ver.server_version == s.version
              and ver.client_version == s.version and "Warning" not in text)
        checks.append(Check("ollama --version", ok, f"ollama version is {s.version}",
                            text.strip().replace("\n", " | ") or "(no output)", text))
        listed = out["list"].output
        ok = out["list"].ok and "NAME" in listed and "could not connect" not in listed
        checks.append(Check("ollama list", ok, "the model table (NAME ID SIZE MODIFIED)",
                            f"exit {out['list'].exit_code}, {len(parse.parse_list(listed))} "
                            "models" if ok else listed.strip()[:300] or "(no output)", listed))
        api = parse.parse_api_version(out["api_version"].output)
        checks.append(Check(f"GET http://{s.connect_host_port}/api/version", api == s.version,
                            s.version, api or out["api_version"].output.strip()[:200],
                            out["api_version"].output))
        checks.append(gpu_check(out["gpu"].output))
        return checks


def gpu_check(journal_lines: str) -> Check:
    """Pure: the Ollama GPU check from its ``inference compute`` log lines (current run).
    Passes when the last discovery found a CUDA device (``library=CUDA`` or old ``cuda``);
    ``library=cpu`` fails with the restart remedy; no line fails as "not logged"."""
    name = "Ollama uses the GPU (journal: inference compute library=CUDA)"
    entries = parse.parse_inference_compute(journal_lines)
    if not entries:
        return Check(name, False, "library=CUDA", "no 'inference compute' line in the journal "
                     "of the current run", journal_lines)
    cuda = [e for e in entries if str(e.get("library", "")).lower() == "cuda"]
    if cuda:
        e = cuda[-1]
        return Check(name, True, "library=CUDA",
                     f"library={e['library']} compute={e.get('compute')} "
                     f"{e.get('description') or e.get('name') or ''}".strip(), journal_lines)
    libs = ", ".join(sorted({str(e.get("library")) for e in entries}))
    return Check(name, False, "library=CUDA", f"library={libs} - remedy: {CPU_REMEDY}",
                 journal_lines)


def check_sha256_ok(actual: str, expected: str) -> bool:
    """True when two hex sha256 strings are equal (case-insensitive, surrounding space ignored)."""
    return actual.strip().lower() == expected.strip().lower() and len(actual.strip()) == 64


def check_sha256(actual: str, expected: str, url: str) -> None:
    """Raise :class:`DeployError` showing BOTH hashes unless ``actual`` equals ``expected``.
    Called before anything is extracted."""
    if check_sha256_ok(actual, expected):
        return
    raise DeployError(
        what="the Ollama tarball's sha256 does not match the catalog; refusing to install it",
        cause=f"expected sha256 {expected.strip().lower()}\n         actual sha256 "
              f"{actual.strip().lower() or '(none)'}\n         of {url}",
        remedy="check vms[].stack.ollama.url and sha256 against the release's sha256sum.txt; "
               "a changed file at the same URL means the source is not the pinned release",
        evidence={"sha256": f"expected {expected}\nactual   {actual}"})


def component(catalog: Any, vm: Any) -> OllamaComponent:
    """The factory :mod:`provisioners.pipeline` calls: the component for catalog VM ``vm``
    (``catalog`` is unused: everything comes from ``vm``)."""
    return OllamaComponent.from_catalog(vm)


@ladder_step("ollama", "ollama service")
def verify_checks(host: Any, session: Any, vm: Any) -> list[Check]:
    """Verify-ladder rung (``provisioners.verify.VERIFY_LADDER``): Ollama's checks for ``vm``,
    or ``[]`` when the catalog does not deploy Ollama. ``host`` (testinfra) is unused: one
    batched probe gives everything in one round trip."""
    if getattr(vm.stack, "ollama", None) is None:
        return []
    return OllamaComponent.from_catalog(vm).verify(session)
