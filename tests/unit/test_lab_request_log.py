"""The lab's PVE request log (``<lab state dir>/pve-requests.jsonl``, :class:`lab.hypervisor.LabPve`)
and its readers: every API request is one line (method, path, status, time), nothing secret, and
:func:`lab.hypervisor.writes_in` finds the writes - what tests/lab/test_verify_is_read_only.py
relies on to prove ``make verify`` changes nothing."""
from __future__ import annotations

import json

from lab.hypervisor import LabPve, read_request_log, writes_in
from tests.lab.test_verify_is_read_only import snapshot_differences
from tests.unit.test_lab_hypervisor import PASSWORD, _create, lab  # noqa: F401 - fixture


def test_served_requests_are_logged_with_status_and_no_secrets(lab):  # noqa: F811
    log = lab.pve.request_log
    assert log.name == LabPve.REQUEST_LOG_NAME
    entries, offset = read_request_log(log)
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("POST", "/api2/json/access/ticket", 200)]  # the fixture's login
    assert writes_in(entries) == []

    assert lab.get(f"{lab.base}/qemu").status_code == 200
    _create(lab)  # POST /qemu, then GETs of its task
    bad = lab.get(f"{lab.base}/qemu", cookies={"PVEAuthCookie": "forged"})
    assert bad.status_code == 401
    entries, end = read_request_log(log, offset)
    assert [e["method"] for e in entries][:2] == ["GET", "POST"]
    assert entries[1]["path"] == "/api2/json/nodes/pve1/qemu" and entries[1]["status"] == 200
    assert entries[-1]["status"] == 401
    assert all(set(e) == {"method", "path", "status", "time"} for e in entries)
    [write] = writes_in(entries)
    assert write == entries[1]
    assert end == log.stat().st_size

    text = log.read_text()
    ticket = lab.cookies.get("PVEAuthCookie")
    assert PASSWORD not in text and ticket not in text and "forged" not in text
    assert all(json.loads(line) for line in text.splitlines())


def test_log_reader_finds_a_write_and_ignores_login_and_reads(tmp_path):
    log = tmp_path / LabPve.REQUEST_LOG_NAME
    lines = [
        {"method": "POST", "path": "/api2/json/access/ticket", "status": 200, "time": 1.0},
        {"method": "GET", "path": "/api2/json/nodes/pve1/qemu", "status": 200, "time": 2.0},
    ]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    entries, offset = read_request_log(log)
    assert len(entries) == 2 and writes_in(entries) == []
    assert offset == log.stat().st_size

    deliberate = {"method": "POST", "path": "/api2/json/nodes/pve1/qemu/140/status/start",
                  "status": 200, "time": 3.0}
    with log.open("a") as fh:
        fh.write(json.dumps(deliberate) + "\n")
        fh.write('{"method": "DELETE", "path": "/api2/json/nodes/pve1/qe')  # half-written line
    entries, offset2 = read_request_log(log, offset)
    assert entries == [deliberate] and writes_in(entries) == [deliberate]
    assert read_request_log(log, offset2) == ([], offset2)  # the half line waits for its end
    for method in ("PUT", "DELETE"):
        assert writes_in([{"method": method, "path": "/api2/json/nodes/pve1/qemu/140/config"}])


def test_missing_log_reads_empty(tmp_path):
    assert read_request_log(tmp_path / "nope.jsonl", 7) == ([], 7)


def test_snapshot_differences_names_the_change():
    before = {"packages": "a 1 install ok installed\nb 2 install ok installed\n"}
    after = {"packages": "a 1 install ok installed\nb 3 install ok installed\n"}
    assert snapshot_differences(before, before) == []
    [diff] = snapshot_differences(before, after)
    assert "b 2" in diff and "b 3" in diff
