"""The HTML report of a lab deploy is living documentation: it shows the nvidia-smi table and
vLLM's /v1/models answer (issue #5, "Done when").

Runs after `make deploy-vm-llm-aimachine` / the behave run of `make test`, on the report it wrote;
the Makefile sets DEPLOYER_CHECK_REPORT to that report folder.
"""
import json
import os
from pathlib import Path

import pytest

from tests.unit.test_redaction_e2e import _Embeds

REPORT = os.environ.get("DEPLOYER_CHECK_REPORT")
pytestmark = pytest.mark.skipif(not REPORT, reason="DEPLOYER_CHECK_REPORT not set: run after a lab deploy (make test)")


@pytest.fixture(scope="module")
def embeds() -> list[tuple[str, str]]:
    index = Path(REPORT) / "index.html"
    assert index.is_file(), f"no HTML report at {index}"
    parser = _Embeds()
    parser.feed(index.read_text(encoding="utf-8"))
    assert parser.embeds, "the HTML report holds no evidence at all"
    return parser.embeds


def test_html_report_shows_the_nvidia_smi_table(embeds):
    tables = [text for _, text in embeds if "NVIDIA-SMI" in text and "Driver Version:" in text]
    assert tables, sorted({caption.strip() for caption, _ in embeds})
    assert "NVIDIA GeForce RTX 5060 Ti" in tables[0] and "16311MiB" in tables[0]


def test_html_report_shows_the_vllm_models_answer(embeds):
    answers = []
    for _, text in embeds:
        start = text.find('{"object"')
        if start < 0:
            continue
        try:
            doc = json.JSONDecoder().raw_decode(text[start:])[0]
        except ValueError:
            continue
        if doc.get("object") == "list" and doc.get("data"):
            answers.append(doc)
    assert answers, sorted({caption.strip() for caption, _ in embeds})
    assert answers[0]["data"][0]["id"] == "Qwen/Qwen2.5-0.5B-Instruct"
