"""Table-driven: every corpus sample in tests/fixtures/corpus gives the right GPUs and findings.

Each file is fed to ``diagnose`` under its own file name (the name says which command printed
it, as in a capture directory); files holding several captures are split at their ``(a)``/``(1)``
labels. A sample missing from the table fails ``test_table_covers_every_corpus_sample``.
"""
import pytest

from provisioners.doctor import diagnose
from tests.fixtures.corpus.samples import CORPUS, samples

D5060 = {"name": "NVIDIA GeForce RTX 5060 Ti", "pci_id": "10de:2d04", "memory_total_mib": None,
         "driver_version": None, "open_kernel_module": None, "compute_capability": "12.0"}
SMI5060 = {**D5060, "pci_id": None, "memory_total_mib": 16311}


def gpu(**kw):
    base = {"name": None, "pci_id": None, "memory_total_mib": None, "driver_version": None,
            "open_kernel_module": None, "compute_capability": None}
    return {**base, **kw}


# (file, label) -> (finding ids in order, gpus)
EXPECTED = {
    ("dmesg_blackwell_closed_module_requires_open.txt", "all"): (
        ["closed-module-on-open-only-gpu"],
        [gpu(name="NVIDIA GeForce RTX 5090 Laptop GPU", pci_id="10de:2c58", driver_version="580.105.08",
             open_kernel_module=False, compute_capability="12.0")]),
    ("dmesg_module_verification_failed_and_gsp_unsupported.txt", "all"): (
        ["open-module-unsupported-gpu"], [gpu(pci_id="10de:2331", open_kernel_module=True)]),
    ("dmesg_nvidia_probe_not_called_nouveau_or_vfio.txt", "a"): (["nouveau-or-vfio-bound"], []),
    ("dmesg_nvidia_probe_not_called_nouveau_or_vfio.txt", "b"): (["nouveau-or-vfio-bound"], []),
    ("dmesg_rtx5060ti_unsupported_by_555_driver_release.txt", "all"): (
        ["driver-too-old-for-gpu"], [{**D5060, "driver_version": "555.58.02"}]),
    ("lspci-nn_rtx5060ti_proxmox_and_iommu.txt", "a"): ([], [D5060]),
    ("lspci-nn_rtx5060ti_proxmox_and_iommu.txt", "b"): ([], [D5060]),
    ("lspci-nnk_rtx5060ti_nvidia_bound.txt", "all"): ([], [D5060]),
    ("nvcc_--version_12.8_and_13.0.txt", "a"): ([], []),
    ("nvcc_--version_12.8_and_13.0.txt", "b"): ([], []),
    ("nvcc_--version_12.8_and_13.0.txt", "c"): ([], []),
    ("nvidia-smi_-q_-x_gtx1070_530.xml", "all"): (
        [], [gpu(name="NVIDIA GeForce GTX 1070", pci_id="10de:1b81", memory_total_mib=8192,
                 driver_version="530.30.02", compute_capability="6.1")]),
    ("nvidia-smi_failure_messages.txt", "1"): (["driver-not-loaded"], []),
    ("nvidia-smi_failure_messages.txt", "2"): (["driver-not-loaded"], []),
    ("nvidia-smi_failure_messages.txt", "3"): (["gpu-fell-off-bus"], []),
    ("nvidia-smi_failure_messages.txt", "4"): (["driver-library-mismatch"], []),
    ("nvidia-smi_query-gpu_csv_rtx5060ti.txt", "a"): ([], [SMI5060]),
    ("nvidia-smi_query-gpu_csv_rtx5060ti.txt", "b"): ([], [SMI5060]),
    # noheader CSV without the command: the columns are unknown, so nothing is claimed
    ("nvidia-smi_query-gpu_csv_rtx5060ti.txt", "c"): ([], []),
    ("nvidia-smi_rtx5060ti_595.71.05_full_table.txt", "all"): ([], [{**SMI5060, "driver_version": "595.71.05"}]),
    ("ollama_api_version_tags_json.txt", "all"): ([], []),
    ("ollama_cli_version_list_ps_outputs.txt", "a"): ([], []),
    ("ollama_cli_version_list_ps_outputs.txt", "b"): ([], []),
    ("ollama_cli_version_list_ps_outputs.txt", "c"): ([], []),
    ("ollama_cli_version_list_ps_outputs.txt", "d"): ([], []),
    ("ollama_journal_gpu_discovery_lines.txt", "a"): ([], [gpu(name="NVIDIA L4", compute_capability="8.9")]),
    ("ollama_journal_gpu_discovery_lines.txt", "b"): ([], [gpu(name="NVIDIA GeForce RTX 5060 Ti", compute_capability="12.0")]),
    ("ollama_journal_gpu_discovery_lines.txt", "c"): ([], [gpu(name="NVIDIA GeForce RTX 5060 Ti", compute_capability="12.0")]),
    ("ollama_journal_gpu_discovery_lines.txt", "d"): (["ollama-cpu-fallback"], []),
    ("ollama_journal_gpu_discovery_lines.txt", "e"): ([], [gpu(compute_capability="12.1")]),
    ("ollama_journal_gpu_discovery_lines.txt", "f"): ([], [gpu(name="Tesla T4", compute_capability="7.5")]),
    ("ollama_journal_gpu_discovery_lines.txt", "g"): ([], []),
    ("pve_passthrough_error_texts.md", "all"): (["iommu-missing", "pci-device-busy"], []),
    ("ubuntu-drivers-devices_gt740m_manual_install_line.txt", "all"): (
        [], [gpu(name="NVIDIA GeForce GT 740M", pci_id="10de:1292")]),
    ("ubuntu-drivers-devices_gtx650ti_server_recommended.txt", "all"): (
        [], [gpu(name="NVIDIA GeForce GTX 650 Ti", pci_id="10de:11c6")]),
    ("ubuntu-drivers-devices_rtx3070ti_with_model_line.txt", "all"): (
        [], [gpu(name="NVIDIA GeForce RTX 3070 Ti", pci_id="10de:2482", compute_capability="8.6")]),
    ("ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt", "all"): (["closed-driver-recommended"], [D5060]),
    ("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt", "a"): ([], []),
    ("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt", "b"): ([], []),
    ("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt", "c"): ([], []),
    ("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt", "d"): ([], []),
    ("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt", "e"): ([], []),
    ("vllm_api_key_and_health_behaviour.txt", "all"): ([], []),
    ("vllm_blackwell_sm120_errors.txt", "a"): (
        ["torch-lacks-gpu-arch"], [gpu(name="NVIDIA GeForce RTX 5070 Ti", compute_capability="12.0")]),
    ("vllm_blackwell_sm120_errors.txt", "b"): (["torch-lacks-gpu-arch"], []),
    ("vllm_blackwell_sm120_errors.txt", "c"): (["torch-lacks-gpu-arch"], []),
    ("vllm_startup_log_v0.10.2_tinyllama.txt", "all"): ([], []),
    ("vllm_triton_no_c_compiler.txt", "all"): (["triton-no-c-compiler"], []),
    ("vllm_v1_models_and_health_responses.txt", "a"): ([], []),
    ("vllm_v1_models_and_health_responses.txt", "b"): ([], []),
    ("vllm_v1_models_and_health_responses.txt", "c"): ([], []),
}


def corpus_files():
    return sorted(p.name for p in CORPUS.iterdir()
                  if p.is_file() and p.suffix in (".txt", ".xml", ".md") and p.name != "README.md")


def test_table_covers_every_corpus_sample():
    present = {(name, label) for name in corpus_files() for label in samples(name)}
    assert present == set(EXPECTED)


@pytest.mark.parametrize("name,label", sorted(EXPECTED), ids=lambda v: v)
def test_corpus_sample(name, label):
    ids, gpus = EXPECTED[(name, label)]
    diag = diagnose({name: samples(name)[label]})
    assert diag.ids == ids
    assert [g.to_dict() for g in diag.gpus] == gpus
    for f in diag.findings:
        assert f.evidence and f.cause and f.remedy and f.severity in ("error", "warning")
        # evidence is quoted from the capture, never invented
        first = f.evidence.splitlines()[0]
        assert first[:40] in samples(name)[label] or first.startswith(("NVRM:", "kernel module"))
