"""The spec itself: all nine seed scenarios, tags, thin steps, read-only @verify, no empty steps."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from behave.parser import parse_file

REPO = Path(__file__).resolve().parents[2]
FEATURE = REPO / "features" / "vm_llm_gpu_passthrough.feature"
AREAS = {"catalog", "deploy", "gpu", "driver", "vllm", "ollama", "idempotency", "failure", "verify", "destructive"}
#: seed scenario number (../shared/seed) -> words our scenario name must contain
SEED = {9: "catalog describes", 1: "Deploying", 2: "GPU is visible", 3: "open flavour", 4: "vLLM runs",
        5: "Ollama runs", 6: "second deployment changes nothing", 7: "GPU passthrough failure",
        8: "failing driver install"}
#: Deployment methods that change a host or a guest; a @verify scenario may call none of them
MUTATING = {"ensure_vm", "deploy_expecting_failure", "converge", "converge_expecting_failure", "bootstrap_guest",
            "redeploy", "destroy", "use_lab_fault_host", "set_lab_profile", "stop_lab"}


@pytest.fixture(scope="module")
def feature():
    return parse_file(str(FEATURE))


def test_every_seed_scenario_is_specified(feature):
    names = [s.name for s in feature.walk_scenarios()]
    missing = {n: words for n, words in SEED.items() if not any(words in name for name in names)}
    assert not missing, f"seed scenarios without a counterpart: {missing}"


def test_every_scenario_has_an_area_tag_and_tags_are_documented(feature):
    header = FEATURE.read_text().split("Feature:")[0]
    for scenario in feature.walk_scenarios():
        assert set(scenario.effective_tags) & AREAS, f"{scenario.name}: no area tag"
        for tag in scenario.effective_tags:
            assert f"@{tag}" in header, f"tag @{tag} is not explained in the feature header"


def test_destructive_and_lab_scenarios_are_failure_scenarios(feature):
    for scenario in feature.walk_scenarios():
        tags = set(scenario.effective_tags)
        if "lab" in tags or "destructive" in tags:
            assert "failure" in tags, scenario.name
        if "verify" in tags:
            assert not tags & {"destructive", "failure"}, scenario.name


def _step_functions() -> dict[tuple[str, int], ast.FunctionDef]:
    funcs = {}
    for path in sorted((REPO / "steps").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.decorator_list:
                funcs[(f"steps/{path.name}", node.decorator_list[0].lineno)] = node
    return funcs


def _deployment_calls(func: ast.FunctionDef) -> list[str]:
    """Names of ``context.deployment.<name>(...)`` calls and ``context.deployment.<property>`` reads."""
    calls = []
    for node in ast.walk(func):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "deployment" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "context"):
            calls.append(node.attr)
    return calls


def test_steps_are_thin_and_never_empty():
    funcs = _step_functions()
    assert len(funcs) > 20
    for (where, _), func in funcs.items():
        methods = {m for m in _deployment_calls(func) if m not in ("vmid", "vm_name", "catalog_path")}
        asserts = [n for n in ast.walk(func) if isinstance(n, ast.Assert)]
        assert len(methods) <= 1, f"{where}:{func.name} calls {sorted(methods)}: one library call per step"
        assert methods or asserts, f"{where}:{func.name} neither calls the library nor asserts anything"
        assert not any(isinstance(n, ast.Pass) for n in func.body), f"{where}:{func.name} is empty"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """behave --dry-run over every scenario (@wip included), JSON of where each step matched.
    Run from a scratch folder with a copy of behave.ini so that no report lands in the repo."""
    work = tmp_path_factory.mktemp("dry")
    shutil.copy(REPO / "behave.ini", work / "behave.ini")
    out = work / "dry.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "behave", "--dry-run", "--no-summary", "--tags=@wip or not @wip",
                           "-f", "json", "-o", str(out), str(FEATURE)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_every_step_of_every_scenario_is_defined(dry_run):
    undefined = [(s["name"], st["name"]) for el in dry_run for s in el["elements"] for st in s["steps"]
                 if "match" not in st or st.get("result", {}).get("status") == "undefined"]
    assert not undefined


def test_verify_scenarios_are_read_only(dry_run):
    funcs = _step_functions()
    seen = 0
    for el in dry_run:
        for scenario in el["elements"]:
            if "verify" not in scenario.get("tags", []):
                continue
            for st in scenario["steps"]:
                where, line = st["match"]["location"].rsplit(":", 1)
                where = "steps/" + Path(where).name
                func = next(f for (w, first), f in funcs.items() if w == where and first <= int(line) <= f.lineno)
                bad = set(_deployment_calls(func)) & MUTATING
                assert not bad, f"@verify '{scenario['name']}' step '{st['name']}' calls {bad}"
                seen += 1
    assert seen >= 12


def test_wip_scenarios_are_excluded_by_default():
    ini = (REPO / "behave.ini").read_text()
    assert re.search(r"^default_tags\s*=\s*not @wip\s*$", ini, re.M)
