"""ubuntu-drivers parsers on real outputs (tests/fixtures/corpus/ubuntu-drivers-*)."""
from provisioners.parsers import ubuntu_drivers as ud
from tests.fixtures.corpus.samples import sample, text


def test_devices_rtx5060ti_recommends_closed_570_from_ppa():
    [dev] = ud.parse_devices(sample("ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt"))
    assert dev.sysfs_path == "/sys/devices/pci0000:00/0000:00:01.1/0000:01:00.0"
    assert dev.modalias == "pci:v000010DEd00002D04sv00001043sd00008A11bc03sc00i00"
    assert dev.pci_id == "10de:2d04"
    assert dev.vendor == "NVIDIA Corporation"
    assert dev.model is None and dev.manual_install is False
    assert [d.package for d in dev.drivers] == ["nvidia-driver-570", "nvidia-driver-570-open",
                                               "xserver-xorg-video-nouveau"]
    rec = dev.recommended
    assert (rec.package, rec.branch, rec.open, rec.server, rec.source, rec.free) == \
        ("nvidia-driver-570", 570, False, False, "third-party", False)
    nouveau = dev.drivers[2]
    assert nouveau.branch is None and nouveau.builtin and nouveau.free is True and nouveau.source == "distro"


def test_devices_model_line_and_many_drivers_rtx3070ti():
    [dev] = ud.parse_devices(sample("ubuntu-drivers-devices_rtx3070ti_with_model_line.txt"))
    assert dev.pci_id == "10de:2482"
    assert dev.model == "GA104 [GeForce RTX 3070 Ti]"
    assert len(dev.drivers) == 16
    assert dev.recommended.package == "nvidia-driver-555"
    opens = [d.package for d in dev.drivers if d.open]
    assert "nvidia-driver-535-server-open" in opens and "nvidia-driver-550" not in opens
    server_open = next(d for d in dev.drivers if d.package == "nvidia-driver-535-server-open")
    assert (server_open.branch, server_open.server, server_open.open) == (535, True, True)


def test_devices_manual_install_and_legacy_package_name():
    [dev] = ud.parse_devices(sample("ubuntu-drivers-devices_gt740m_manual_install_line.txt"))
    assert dev.manual_install is True
    assert dev.pci_id == "10de:1292"
    legacy = next(d for d in dev.drivers if d.package == "nvidia-340")
    assert legacy.branch == 340 and not legacy.open


def test_devices_server_variant_recommended_and_prompt_line_skipped():
    [dev] = ud.parse_devices(sample("ubuntu-drivers-devices_gtx650ti_server_recommended.txt"))
    assert dev.recommended.package == "nvidia-driver-450-server"
    assert dev.recommended.server is True


def test_devices_tolerates_stderr_noise_and_blank_lines():
    noisy = ("udevadm hwdb is deprecated. Use systemd-hwdb instead.\n\n"
             + sample("ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt")
             + "udevadm hwdb is deprecated. Use systemd-hwdb instead.\n")
    [dev] = ud.parse_devices(noisy)
    assert len(dev.drivers) == 3


def test_list_noble_hwe_blackwell():
    opts = ud.parse_list(sample("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt", "a"))
    assert [o.package for o in opts][:2] == ["nvidia-driver-575-open", "nvidia-driver-570-open"]
    assert len(opts) == 8
    first = opts[0]
    assert (first.branch, first.open, first.server, first.source, first.free, first.recommended) == \
        (575, True, False, None, None, False)
    assert first.kernel_modules_provider == "linux-modules-nvidia-575-open-generic-hwe-24.04"


def test_list_gpgpu_skips_notes_and_ellipsis():
    opts = ud.parse_list(sample("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt", "b"))
    assert [o.package for o in opts] == ["nvidia-driver-535-server", "nvidia-driver-570-server",
                                         "nvidia-driver-580-server"]


def test_list_dkms_provider_and_truncated_line():
    dkms = ud.parse_list(sample("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt", "e"))
    assert [(o.package, o.kernel_modules_provider) for o in dkms] == [
        ("nvidia-driver-545", "nvidia-dkms-545"), ("nvidia-driver-545-open", "nvidia-dkms-545-open")]
    c = ud.parse_list(sample("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt", "c"))
    assert c[-1].package == "nvidia-driver-535"
    assert len(c) == 6


def test_list_recommended_flag_marks_entries():
    opts = ud.parse_list("nvidia-driver-580-open, (kernel modules provided by linux-modules-nvidia-580-open-generic)\n",
                         recommended_only=True)
    assert ud.recommended(opts).package == "nvidia-driver-580-open"


def test_garbage_gives_nothing():
    assert ud.parse_devices("hello\nworld\n") == []
    assert ud.parse_list("udevadm hwdb is deprecated. Use systemd-hwdb instead.\n$ sudo ubuntu-drivers list\n") == []
    assert ud.parse_devices(text("nvcc_--version_12.8_and_13.0.txt")) == []
