"""Kernel log parser on real logs (tests/fixtures/corpus/dmesg_*)."""
from provisioners.parsers import dmesg
from tests.fixtures.corpus.samples import sample, text


def kinds(events):
    return [e.kind for e in events]


def test_closed_module_on_blackwell_joined_and_classified():
    events = dmesg.parse(text("dmesg_blackwell_closed_module_requires_open.txt"))
    loaded = events[0]
    assert (loaded.kind, loaded.version, loaded.open) == ("module-loaded", "580.105.08", False)
    closed = [e for e in events if e.kind == "closed-module-on-open-only"]
    assert len(closed) == 2
    assert closed[0].pci_id == "10de:2c58" and closed[0].bus_id == "0000:02:00.0"
    assert "requires use of the NVIDIA open kernel modules" in closed[0].text  # continuation joined
    assert closed[0].timestamp == "5.559842"
    assert kinds(events).count("rm-init-adapter-failed") == 4


def test_open_module_loaded_line():
    [ev] = dmesg.parse("[    4.1] NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  570.133.07  "
                       "Release Build  (dvs-builder@U16-I3-B03-4-3)  Fri Mar 14 2025\n")
    assert (ev.kind, ev.version, ev.open) == ("module-loaded", "570.133.07", True)


def test_unsupported_by_release_555():
    events = dmesg.parse(text("dmesg_rtx5060ti_unsupported_by_555_driver_release.txt"))
    first = events[0]
    assert (first.kind, first.pci_id, first.version, first.bus_id) == \
        ("unsupported-by-release", "10de:2d04", "555.58.02", "0000:3c:00.0")
    assert "probe-failed" in kinds(events) and "no-devices-probed" in kinds(events)


def test_benign_taint_lines_and_gsp_wording():
    events = dmesg.parse(text("dmesg_module_verification_failed_and_gsp_unsupported.txt"))
    assert kinds(events)[:3] == ["benign", "benign", "benign"]
    assert all(e.benign for e in events[:3])
    gsp = events[3]
    assert (gsp.kind, gsp.pci_id) == ("gsp-unsupported", "10de:2331")


def test_probe_not_called_names_vfio_pci():
    events = dmesg.parse(sample("dmesg_nvidia_probe_not_called_nouveau_or_vfio.txt", "a"))
    [pnc] = [e for e in events if e.kind == "probe-not-called"]
    assert pnc.conflicting_driver == "vfio-pci"
    assert pnc.timestamp == "Sat Jun 27 19:59:02 2026"


def test_probe_not_called_names_nouveau_older_wording():
    events = dmesg.parse(sample("dmesg_nvidia_probe_not_called_nouveau_or_vfio.txt", "b"))
    [pnc] = [e for e in events if e.kind == "probe-not-called"]
    assert pnc.conflicting_driver == "nouveau"


def test_secure_boot_fell_off_bus_ltr_and_journal_prefix():
    # not in the corpus: modprobe's and the kernel's standard wordings (kernel module signing docs,
    # NVIDIA Xid 79), synthesised here
    log = ("modprobe: ERROR: could not insert 'nvidia': Key was rejected by service\n"
           "Nov 29 10:00:01 gpu kernel: NVRM: Xid (PCI:0000:01:00): 79, pid=0, GPU has fallen off the bus.\n"
           "[    1.0] pcieport 0000:00:1c.0: LTR is disabled\n")
    events = dmesg.parse(log)
    assert kinds(events) == ["secure-boot-rejected", "fell-off-bus", "benign"]
    assert events[1].timestamp == "Nov 29 10:00:01"


def test_unrelated_lines_ignored():
    assert dmesg.parse("[    0.000000] Linux version 6.8.0-45-generic\n\n$ sudo dmesg\n") == []


def test_unindented_continuation_after_timestamped_line():
    # the corpus record, with its continuation line's indent lost (as some log viewers print it)
    log = ("[    5.559842] NVRM: The NVIDIA GPU 0000:02:00.0 (PCI ID: 10de:2c58)\n"
           "NVRM: installed in this system requires use of the NVIDIA open kernel modules.\n")
    [ev] = dmesg.parse(log)
    assert (ev.kind, ev.pci_id) == ("closed-module-on-open-only", "10de:2c58")
