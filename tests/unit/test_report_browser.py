"""The HTML report as a browser shows it: headless Debian chromium renders reports/latest/index.html
of a real behave run (@catalog) and the rendered page holds the attached catalog plan.
Skipped when chromium is not installed (apt-get install chromium)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"), pytest.mark.slow]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("browser")
    shutil.copy(REPO / "behave.ini", work / "behave.ini")
    proc = subprocess.run([sys.executable, "-m", "behave", "--tags=@catalog",
                           str(REPO / "features" / "vm_llm_gpu_passthrough.feature")],
                          cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work, (work / "reports" / "latest" / "index.html").resolve()


def _chromium(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={work / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_rendered_report_shows_the_catalog_plan(report):
    work, index = report
    proc = _chromium(work, "--dump-dom", index.as_uri())
    dom = proc.stdout
    assert "Scenario: The catalog describes vm-llm-aimachine completely and validates" in dom, proc.stderr[-2000:]
    assert "catalog plan" in dom and "VM 140 vm-llm-aimachine" in dom
    assert "10de:2d04" in dom


def test_screenshot_of_the_report(report):
    work, index = report
    png = work / "report.png"
    proc = _chromium(work, "--window-size=1280,1600", f"--screenshot={png}", index.as_uri())
    assert png.is_file(), proc.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one
