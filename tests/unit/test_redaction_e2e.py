"""End to end: planted secrets never reach the console or any report file, with every formatter on.

behave runs the real @catalog scenario plus a scenario whose steps deliberately leak the planted
values (print, logging, evidence attachment, assertion message, DeployError evidence) through the
project's real environment.py and steps. The run happens in a scratch folder holding a copy of
behave.ini, so its reports land there (reports/<timestamp>/, reports/latest). Positive controls
prove the leaks really flowed (the mask ``***`` appears where the values would have been)."""
from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FEATURE = REPO / "features" / "vm_llm_gpu_passthrough.feature"
PLANTED = {
    "PROXMOX_TOKEN_SECRET": "pl4nted-token-5ecret-0b5e3c1e",
    "PROXMOX_PASSWORD": "pl4nted-r00t-passw0rd",
    "VLLM_API_KEY": "pl4nted-vllm-k3y-abc123",
    "HF_TOKEN": "hf_pl4ntedHuggingFaceT0ken",
}

LEAK_STEPS = '''
import logging
import os
from behave import then, when
from provisioners import report
from provisioners.errors import DeployError

SECRETS = [os.environ[name] for name in {names!r}]  # planted by the test through the environment


@when("a careless step prints and logs the planted secrets")
def step_print(context):
    print("printed:", " ".join(SECRETS))
    logging.getLogger("careless").warning("logged: %s", " ".join(SECRETS))


@when("the planted secrets are attached as evidence")
def step_attach(context):
    report.attach(context, "leaky evidence", "attached: " + " ".join(SECRETS))


@then("a step fails with the planted secrets in its error and evidence")
def step_fail(context):
    raise DeployError("leaky failure " + SECRETS[0], cause="cause " + SECRETS[1],
                      evidence={{"leaky log": "evidence " + " ".join(SECRETS)}})
'''

LEAK_SCENARIO = """
  @leak
  Scenario: Secrets that flow everywhere are masked everywhere
    When a careless step prints and logs the planted secrets
    And the planted secrets are attached as evidence
    Then a step fails with the planted secrets in its error and evidence
"""


def _catalog_scenario() -> str:
    """The @catalog scenario text of the real feature file (tag line to the next comment/tag)."""
    lines = FEATURE.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "@catalog")
    end = next(i for i in range(start + 2, len(lines)) if lines[i].strip().startswith(("#", "@")))
    return "\n".join(lines[start:end])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    shutil.copy(REPO / "behave.ini", work / "behave.ini")
    feats = work / "features"
    (feats / "steps").mkdir(parents=True)
    (feats / "redaction.feature").write_text(
        "Feature: secret hygiene\n\n" + _catalog_scenario() + "\n" + LEAK_SCENARIO)
    # the project's own hooks and steps, plus the leaking ones
    (feats / "environment.py").write_text(  # the project's real hooks, loaded by path
        "import importlib.util\n"
        f"_spec = importlib.util.spec_from_file_location('project_environment', {str(REPO / 'environment.py')!r})\n"
        "_mod = importlib.util.module_from_spec(_spec)\n"
        "_spec.loader.exec_module(_mod)\n"
        "globals().update({k: v for k, v in vars(_mod).items() if k.startswith(('before_', 'after_'))})\n")
    (feats / "steps" / "project_steps.py").write_text(
        "from pathlib import Path\n"
        f"for _f in sorted(Path({str(REPO / 'steps')!r}).glob('*.py')):\n"
        "    exec(compile(_f.read_text(), str(_f), 'exec'), {'__file__': str(_f)})\n")
    (feats / "steps" / "leak_steps.py").write_text(LEAK_STEPS.format(names=list(PLANTED)))
    env = {**os.environ, **PLANTED, "PYTHONPATH": str(REPO)}
    env.pop(  # the lab's own password is not what this test plants
        "LAB_PVE_PASSWORD", None)
    proc = subprocess.run([sys.executable, "-m", "behave", "--tags=@catalog or @leak", "features"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=300)
    return work, proc


def _all_text(work: Path) -> dict[Path, str]:
    """Every file written under ``work`` as text, with JSON embeddings and html-pretty's
    gzip+base64 embeds decoded, so that an encoded secret is found too."""
    texts = {}
    for path in work.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        extra = []
        if path.suffix == ".json":
            for feature in json.loads(text or "[]"):
                for el in feature.get("elements", []):
                    for st in el.get("steps", []):
                        extra += [base64.b64decode(e["data"]).decode() for e in st.get("embeddings", [])]
        for data in re.findall(r'class="to-render"[^>]*data="([^"]+)"', text):
            extra.append(gzip.decompress(base64.b64decode(data)).decode("utf-8", "replace"))
        texts[path] = text + "\n".join(extra)
    return texts


def test_behave_ran_both_scenarios(run):
    work, proc = run
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # the leak scenario fails on purpose
    assert "1 scenario passed, 0 failed, 1 error" in out, out


def test_no_planted_secret_on_the_console(run):
    _, proc = run
    out = proc.stdout + proc.stderr
    for name, value in PLANTED.items():
        assert value not in out, f"{name} leaked to the console"
    assert "leaky failure ***" in out  # the error message did go to the console, masked


def test_no_planted_secret_in_any_file(run):
    work, _ = run
    texts = _all_text(work)
    latest = (work / "reports" / "latest").resolve()
    names = {p.relative_to(latest).as_posix() for p in texts if latest in p.parents}
    assert {"index.html", "behave.json"} <= names and any(n.startswith("junit/") for n in names), names
    for path, text in texts.items():
        for name, value in PLANTED.items():
            assert value not in text, f"{name} leaked into {path}"


def test_the_leaks_really_flowed_into_every_report(run):
    work, _ = run
    latest = work / "reports" / "latest"
    html = _all_text(work)[(latest / "index.html").resolve()]
    js = _all_text(work)[(latest / "behave.json").resolve()]
    junit = "".join(p.read_text() for p in (latest / "junit").glob("*.xml"))
    assert "attached: *** *** *** ***" in html and "attached: *** *** *** ***" in js
    assert "evidence *** *** *** ***" in html  # DeployError evidence attached by environment.py
    assert "leaky failure ***" in html and "leaky failure ***" in junit  # behave's JSON omits errors
    assert "printed: *** *** *** ***" in junit and "logged: *** *** *** ***" in junit


class _Embeds(HTMLParser):
    """Collect (caption, text) of html-pretty's embeds: a div.embed-button caption followed by a
    pre.embed-content holding a span (plain) or span.to-render (gzip+base64)."""

    def __init__(self):
        super().__init__()
        self.embeds, self._caption, self._in_button, self._in_content, self._text = [], None, False, 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "div" and "embed-button" in cls:
            self._in_button, self._caption = True, ""
        elif tag == "pre" and "embed-content" in cls:
            self._in_content, self._text = 1, []
        elif self._in_content and tag == "span" and "to-render" in cls:
            self._text.append(gzip.decompress(base64.b64decode(a["data"])).decode())

    def handle_endtag(self, tag):
        if tag == "div" and self._in_button:
            self._in_button = False
        elif tag == "pre" and self._in_content:
            self._in_content = 0
            self.embeds.append((self._caption, "".join(self._text)))

    def handle_data(self, data):
        if self._in_button:
            self._caption += data
        elif self._in_content:
            self._text.append(data)


def test_html_report_holds_the_catalog_plan_as_evidence(run):
    work, _ = run
    parser = _Embeds()
    parser.feed((work / "reports" / "latest" / "index.html").read_text())
    plans = [text for caption, text in parser.embeds if caption.strip() == "catalog plan"]
    assert plans, [c for c, _ in parser.embeds]
    assert "VM 140 vm-llm-aimachine" in plans[0] and "10de:2d04" in plans[0]
