"""Example inputs for every doctor finding id: the rows of the troubleshooting table.

Each :class:`Example` is one capture that makes :func:`provisioners.doctor.diagnose` report its
finding. Where a real capture exists, the text is copied verbatim from the project's corpus
(``tests/fixtures/corpus/``, itself copied from ``../shared/corpus/`` with its ``# source:`` line)
and ``source`` names the file and the labelled sample, e.g. ``"corpus:
tests/fixtures/corpus/nvidia-smi_failure_messages.txt (3)"`` (``(all)`` = the whole file without
its ``#`` header; an excerpt is a verbatim part of the sample). Where no capture exists, the text
is what the lab's fake programs replay (``source`` starts with ``lab replay:`` and names the
program), or a minimal line marked ``synthesised:`` in ``source`` with the reason.

The library does not import ``tests/`` or ``lab/``; ``tests/unit/test_troubleshooting.py`` checks
that every corpus text is still verbatim in its file and every lab text is still what the lab
prints.
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = ["Example", "EXAMPLES"]


class Example(NamedTuple):
    """One example input.

    Attributes:
        id: the finding id it shows (a key of :data:`provisioners.doctor.FINDINGS`).
        source: where the text comes from: ``corpus: PATH (LABEL)``, ``lab replay: ...`` or
            ``synthesised: ...``.
        capture: the capture name given to ``diagnose`` (it names the command, see
            :func:`provisioners.doctor.capture_kind`).
        text: the captured output (a pasted transcript may hold several ``$ `` commands).
    """

    id: str
    source: str
    capture: str
    text: str


EXAMPLES: tuple[Example, ...] = (
    Example('closed-module-on-open-only-gpu',
            'corpus: tests/fixtures/corpus/dmesg_blackwell_closed_module_requires_open.txt (all)',
            'dmesg_blackwell_closed_module_requires_open.txt',
            ('$ lspci -nn | grep -i -E "nvidia|3d|vga"\n'
             '\n'
             '00:02.0 VGA compatible controller [0300]: Intel Corporation Arrow Lake-U [Intel Graphics] [8086:7d67] (rev 06)\n'
             '02:00.0 VGA compatible controller [0300]: NVIDIA Corporation Device [10de:2c58] (rev a1)\n'
             '02:00.1 Audio device [0403]: NVIDIA Corporation Device [10de:22e9] (rev a1)\n'
             '80:14.5 Non-VGA unclassified device [0000]: Intel Corporation Device [8086:7f2f] (rev 10)\n'
             '80:1c.5 PCI bridge [0604]: Intel Corporation Device [8086:7f3d] (rev 10)\n'
             '\n'
             '$ sudo dmesg | grep -i nvrm\n'
             '\n'
             '[    5.499014] NVRM: loading NVIDIA UNIX x86_64 Kernel Module  580.105.08  Wed Oct 29 23:15:11 UTC 2025\n'
             '[    5.559842] NVRM: The NVIDIA GPU 0000:02:00.0 (PCI ID: 10de:2c58)\n'
             '               NVRM: installed in this system requires use of the NVIDIA open kernel modules.\n'
             '[    5.559858] NVRM: GPU 0000:02:00.0: RmInitAdapter failed! (0x22:0x56:884)\n'
             '[    5.560313] NVRM: GPU 0000:02:00.0: rm_init_adapter failed, device minor number 0\n'
             '[    8.481576] NVRM: The NVIDIA GPU 0000:02:00.0 (PCI ID: 10de:2c58)\n'
             '               NVRM: installed in this system requires use of the NVIDIA open kernel modules.\n'
             '[    8.481591] NVRM: GPU 0000:02:00.0: RmInitAdapter failed! (0x22:0x56:884)\n'
             '[    8.482116] NVRM: GPU 0000:02:00.0: rm_init_adapter failed, device minor number 0\n'
             '\n'
             '$ nvidia-smi \n'
             '\n'
             'No devices were found\n')),
    Example('driver-too-old-for-gpu',
            'corpus: tests/fixtures/corpus/dmesg_rtx5060ti_unsupported_by_555_driver_release.txt (all)',
            'dmesg_rtx5060ti_unsupported_by_555_driver_release.txt',
            ('[    8.299192] NVRM: The NVIDIA GPU 0000:3c:00.0 (PCI ID: 10de:2d04)\n'
             '               NVRM: installed in this system is not supported by the\n'
             '               NVRM: NVIDIA 555.58.02 driver release.\n'
             '[    8.299233] nvidia 0000:3c:00.0: probe with driver nvidia failed with error -1\n'
             '[    8.299260] NVRM: The NVIDIA probe routine failed for 1 device(s).\n'
             '[    8.299262] NVRM: None of the NVIDIA devices were initialized.\n'
             '\n'
             '$ sudo /sbin/modprobe -v nvidia-current-open NVreg_OpenRmEnableUnsupportedGpus=1\n'
             "modprobe: ERROR: could not insert 'nvidia_current_open': No such device\n"
             '\n'
             '$ nvidia-smi\n'
             "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n")),
    Example('gpu-fell-off-bus',
            'corpus: tests/fixtures/corpus/nvidia-smi_failure_messages.txt (3)',
            'nvidia-smi_failure_messages.txt',
            ('Unable to determine the device handle for GPU 0000:83:00.0: Unknown Error\n')),
    Example('driver-library-mismatch',
            'corpus: tests/fixtures/corpus/nvidia-smi_failure_messages.txt (4)',
            'nvidia-smi_failure_messages.txt',
            ('Failed to initialize NVML: Driver/library version mismatch\n'
             '    NVML library version: 610.43\n')),
    Example('driver-not-loaded',
            'corpus: tests/fixtures/corpus/nvidia-smi_failure_messages.txt (1)',
            'nvidia-smi_failure_messages.txt',
            ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n")),
    Example('nouveau-or-vfio-bound',
            'corpus: tests/fixtures/corpus/dmesg_nvidia_probe_not_called_nouveau_or_vfio.txt (a)',
            'dmesg_nvidia_probe_not_called_nouveau_or_vfio.txt',
            ('[Sat Jun 27 19:59:02 2026] nvidia-nvlink: Nvlink Core is being initialized, major device number 508\n'
             '[Sat Jun 27 19:59:02 2026] NVRM: GPU 0000:01:00.0 is already bound to vfio-pci.\n'
             '[Sat Jun 27 19:59:02 2026] NVRM: The NVIDIA probe routine was not called for 1 device(s).\n'
             '[Sat Jun 27 19:59:02 2026] NVRM: This can occur when another driver was loaded and\n'
             '                           NVRM: obtained ownership of the NVIDIA device(s).\n'
             '[Sat Jun 27 19:59:02 2026] NVRM: Try unloading the conflicting kernel module (and/or\n'
             '                           NVRM: reconfigure your kernel without the conflicting\n'
             '                           NVRM: driver(s)), then try loading the NVIDIA kernel module\n'
             '                           NVRM: again.\n'
             '[Sat Jun 27 19:59:02 2026] NVRM: No NVIDIA devices probed.\n'
             '\n')),
    Example('torch-lacks-gpu-arch',
            'corpus: tests/fixtures/corpus/vllm_blackwell_sm120_errors.txt (a)',
            'vllm_blackwell_sm120_errors.txt',
            ('vllm-1  | /usr/local/lib/python3.12/dist-packages/torch/cuda/__init__.py:287: UserWarning: \n'
             'vllm-1  | NVIDIA GeForce RTX 5070 Ti with CUDA capability sm_120 is not compatible with the current PyTorch installation.\n'
             'vllm-1  | The current PyTorch install supports CUDA capabilities sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90.\n'
             'vllm-1  | If you want to use the NVIDIA GeForce RTX 5070 Ti GPU with PyTorch, please check the instructions at https://pytorch.org/get-started/locally/\n'
             '\n')),
    Example('triton-no-c-compiler',
            'corpus: tests/fixtures/corpus/vllm_triton_no_c_compiler.txt (all)',
            'vllm_triton_no_c_compiler.txt',
            ('ERROR 03-22 09:50:04 [core.py:340]   File "/opt/conda/lib/python3.10/site-packages/triton/backends/nvidia/driver.py", line 80, in __init__\n'
             'ERROR 03-22 09:50:04 [core.py:340]     mod = compile_module_from_src(Path(os.path.join(dirname, "driver.c")).read_text(), "cuda_utils")\n'
             'ERROR 03-22 09:50:04 [core.py:340]   File "/opt/conda/lib/python3.10/site-packages/triton/backends/nvidia/driver.py", line 57, in compile_module_from_src\n'
             'ERROR 03-22 09:50:04 [core.py:340]     so = _build(name, src_path, tmpdir, library_dirs(), include_dir, libraries)\n'
             'ERROR 03-22 09:50:04 [core.py:340]   File "/opt/conda/lib/python3.10/site-packages/triton/runtime/build.py", line 32, in _build\n'
             'ERROR 03-22 09:50:04 [core.py:340]     raise RuntimeError("Failed to find C compiler. Please\n'
             'RuntimeError: Failed to find C compiler. Please specify via CC environment variable.\n'
             '# Fix used in threads: apt-get install build-essential (and python3-dev / python3.12-dev for Python.h)\n')),
    Example('ollama-cpu-fallback',
            'corpus: tests/fixtures/corpus/ollama_journal_gpu_discovery_lines.txt (d)',
            'ollama_journal_gpu_discovery_lines.txt',
            ('time=2026-07-15T01:51:42.511Z level=INFO source=types.go:50 msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu libdirs=ollama driver="" pci_id="" type="" total="121.7 GiB" available="121.7 GiB"\n')),
    Example('closed-driver-recommended',
            'corpus: tests/fixtures/corpus/ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt (all)',
            'ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt',
            ('ubuntu-drivers devices\n'
             '\n'
             '== /sys/devices/pci0000:00/0000:00:01.1/0000:01:00.0 ==\n'
             'modalias : pci:v000010DEd00002D04sv00001043sd00008A11bc03sc00i00\n'
             'vendor   : NVIDIA Corporation\n'
             'driver   : nvidia-driver-570 - third-party non-free recommended\n'
             'driver   : nvidia-driver-570-open - third-party non-free\n'
             'driver   : xserver-xorg-video-nouveau - distro free builtin\n')),
    Example('open-module-unsupported-gpu',
            'corpus: tests/fixtures/corpus/dmesg_module_verification_failed_and_gsp_unsupported.txt (all)',
            'dmesg_module_verification_failed_and_gsp_unsupported.txt',
            ('[  160.822054] nvidia: loading out-of-tree module taints kernel.\n'
             '[  160.825258] nvidia: module verification failed: signature and/or required key missing - tainting kernel\n'
             '[  160.877989] nvidia-nvlink: Nvlink Core is being initialized, major device number 236\n'
             '[  160.877997] NVRM: The NVIDIA GPU 0000:01:00.0 (PCI ID: 10de:2331)\n'
             '               NVRM: installed in this system is not supported by open\n'
             '               NVRM: nvidia.ko because it does not include the required GPU\n'
             '               NVRM: System Processor (GSP).\n'
             "               NVRM: Please see the 'Open Linux Kernel Modules' and 'GSP\n"
             "               NVRM: Firmware' sections in the driver README, available on\n"
             '               NVRM: the Linux graphics driver download page at\n'
             '               NVRM: www.nvidia.com.\n'
             '[  166.261422] nvidia: probe of 0000:01:00.0 failed with error -1\n')),
    Example('iommu-missing',
            'corpus: tests/fixtures/corpus/pve_passthrough_error_texts.md (all), excerpt: the PVE text of row "IOMMU off"',
            'pve',
            'cannot prepare PCI pass-through, IOMMU not present\n'),
    Example('pci-device-busy',
            'corpus: tests/fixtures/corpus/pve_passthrough_error_texts.md (all), excerpt: the PVE text of row '
            '"Device used by another VM" (placeholders as PVE\'s source has them)',
            'pve',
            "PCI device '<id>' already in use by VMID '<n>'\n"),
    # The lab's secure-boot profile: nvidia-lab-kmod writes systemd-modules-load's failure to the
    # kernel log (the pid varies per boot).
    Example('secure-boot-rejected-module',
            'lab replay: lab/artefacts/fakes/nvidia_kmod.py kernel_messages(), profile secure-boot',
            'dmesg',
            "systemd-modules-load[412]: Failed to insert module 'nvidia': Key was rejected by service\n"),
    # The lab's vLLM with Ollama holding 4000 MiB of the 16311 MiB RTX 5060 Ti (pids/time vary).
    Example('vllm-insufficient-free-vram',
            'lab replay: lab/artefacts/vllm_pkg/vllm/entrypoints/cli/main.py check_gpu(), profile rtx5060ti, '
            'Ollama using 4000 MiB, --gpu-memory-utilization 0.9 (the default)',
            'vllm.log',
            ('(EngineCore_0 pid=2143) INFO 11-29 17:24:47 [core.py:648] Waiting for init message from front-end.\n'
             '(EngineCore_0 pid=2143) ERROR 11-29 17:24:47 [core.py:632] ValueError: Free memory on device '
             '(12.01/15.93 GiB) on startup is less than desired GPU memory utilization (0.9, 14.34 GiB). Decrease GPU '
             'memory utilization or reduce GPU memory used by other processes.\n'
             'Process EngineCore_0:\n')),
    # No capture shows an nvcc older than a GPU: the lab ships only CUDA 12.8, the corpus 12.8/13.0.
    Example('cuda-too-old-for-gpu',
            'synthesised: the nvcc line (the version of Ubuntu 24.04\'s nvidia-cuda-toolkit 12.0.140; no capture '
            'of it exists) after the lspci line of corpus tests/fixtures/corpus/lspci-nnk_rtx5060ti_nvidia_bound.txt',
            'transcript',
            ('$ lspci -nn -d 10de:\n'
             '01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GB206 [GeForce RTX 5060 Ti] [10de:2d04] (rev a1)\n'
             '$ nvcc --version\n'
             'Cuda compilation tools, release 12.0, V12.0.140\n')),
    # No real capture of a failed nvidia DKMS build is in the corpus; the lab's driver-install-fails
    # profile prints DKMS's real wording (sources cited in lab/artefacts/debs.py). The kernel is
    # the guest's `uname -r` at replay time (6.8.0-50-generic here, as in tests/unit/test_driver.py).
    Example('dkms-build-failed',
            'lab replay: lab/artefacts/debs.py driver_debs(570, fails=True), nvidia-dkms-570-open postinst, '
            'profile driver-install-fails, kernel 6.8.0-50-generic',
            'apt output',
            ('Loading new nvidia-570.195.03 DKMS files...\n'
             'Building for 6.8.0-50-generic\n'
             'Building for architecture x86_64\n'
             'Building initial module for 6.8.0-50-generic\n'
             'Error! Bad return status for module build on kernel: 6.8.0-50-generic (x86_64)\n'
             'Consult /var/lib/dkms/nvidia/570.195.03/build/make.log for more information.\n')),
)
