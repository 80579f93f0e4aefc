"""nvidia-smi parsers on real outputs (tests/fixtures/corpus/nvidia-smi_*)."""
import pytest

from provisioners.parsers import nvidia_smi as smi
from tests.fixtures.corpus.samples import CORPUS, sample, text


def test_table_rtx5060ti_595():
    t = smi.parse_table(sample("nvidia-smi_rtx5060ti_595.71.05_full_table.txt"))
    assert (t.driver_version, t.cuda_version, t.smi_version) == ("595.71.05", "13.2", "595.71.05")
    [gpu] = t.gpus
    assert gpu["index"] == 0
    assert gpu["name"] == "NVIDIA GeForce RTX 5060 Ti"
    assert gpu["bus_id"] == "00000000:01:00.0"
    assert (gpu["memory_used_mib"], gpu["memory_total_mib"]) == (648, 16311)
    assert (gpu["perf"], gpu["temp_c"], gpu["util_percent"], gpu["compute_mode"]) == ("P5", 30, 0, "Default")
    assert [(p["pid"], p["type"], p["used_mib"]) for p in t.processes] == [(914, "G", 2), (2425, "G", 2)]


def test_table_of_failure_text_is_empty():
    t = smi.parse_table(sample("nvidia-smi_failure_messages.txt", "2"))
    assert t.driver_version is None and t.gpus == []


def test_csv_with_header_units_to_mib():
    rows = smi.parse_query_csv(sample("nvidia-smi_query-gpu_csv_rtx5060ti.txt", "b"))
    assert rows == [{"name": "NVIDIA GeForce RTX 5060 Ti", "memory.total": 16311, "memory.used": 15}]


def test_csv_noheader_with_fields():
    rows = smi.parse_query_csv(sample("nvidia-smi_query-gpu_csv_rtx5060ti.txt", "c").splitlines()[1],
                               fields=["name", "memory.total", "driver_version"])
    assert rows == [{"name": "NVIDIA GeForce RTX 5060 Ti", "memory.total": 16311, "driver_version": "580.95.05"}]


def test_csv_noheader_fields_from_prompt_line():
    # row quoted in the nvcc corpus file (8x RTX 5060 Ti box), with the command it came from
    out = ("$ nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader\n"
           "4, NVIDIA GeForce RTX 5060 Ti, 580.159.03, 16311 MiB\n")
    assert smi.parse_query_csv(out) == [{"index": 4, "name": "NVIDIA GeForce RTX 5060 Ti",
                                         "driver_version": "580.159.03", "memory.total": 16311}]


def test_csv_nounits_uses_header_unit():
    rows = smi.parse_query_csv("name, memory.total [MiB]\nNVIDIA GeForce RTX 5060 Ti, 16311\n")
    assert rows[0]["memory.total"] == 16311


def test_xml_gtx1070():
    # the file starts with a "# source:" line that parse_xml must skip
    t = smi.parse_xml((CORPUS / "nvidia-smi_-q_-x_gtx1070_530.xml").read_text())
    assert t.driver_version == "530.30.02"
    assert t.cuda_version is None  # "Not Found"
    [gpu] = t.gpus
    assert gpu["name"] == "NVIDIA GeForce GTX 1070"
    assert gpu["pci_id"] == "10de:1b81"
    assert gpu["architecture"] == "Pascal"
    assert gpu["bus_id"] == "00000000:09:00.0"
    assert (gpu["memory_total_mib"], gpu["memory_used_mib"], gpu["memory_free_mib"]) == (8192, 1270, 6843)
    assert t.processes == [{"gpu": 0, "pid": 200870, "type": "C", "name": None, "used_mib": 958}]


def test_xml_rejects_non_xml():
    with pytest.raises(ValueError):
        smi.parse_xml("No devices were found\n")


@pytest.mark.parametrize("label,kind", [("1", "driver-not-loaded"), ("2", "no-devices"),
                                        ("3", "fell-off-bus"), ("4", "driver-library-mismatch")])
def test_classify_failure(label, kind):
    assert smi.classify_failure(sample("nvidia-smi_failure_messages.txt", label)) == kind


def test_classify_healthy_is_none_and_nvml_version():
    assert smi.classify_failure(text("nvidia-smi_rtx5060ti_595.71.05_full_table.txt")) is None
    assert smi.nvml_library_version(sample("nvidia-smi_failure_messages.txt", "4")) == "610.43"


def test_failure_line_picks_the_matching_line():
    both = sample("nvidia-smi_failure_messages.txt", "1") + sample("nvidia-smi_failure_messages.txt", "4")
    assert smi.classify_failure(both) == "driver-library-mismatch"
    assert smi.failure_line(both, "driver-library-mismatch") == "Failed to initialize NVML: Driver/library version mismatch"
    assert smi.failure_line(both, "fell-off-bus") is None


# Older (<= 535) table layout: real output quoted in a public GitHub markdown file (T4 driver
# install notes, search index file id 4577082300), not in the shared corpus.
OLD_T4_TABLE = """\
Fri Feb 17 20:21:13 2023
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 515.86.01    Driver Version: 515.86.01    CUDA Version: 11.7     |
|-------------------------------+----------------------+----------------------+
| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |
|                               |                      |               MIG M. |
|===============================+======================+======================|
|   0  Tesla T4            Off  | 00000000:00:04.0 Off |                    0 |
| N/A   38C    P0    28W /  70W |      2MiB / 15360MiB |      4%      Default |
|                               |                      |                  N/A |
+-------------------------------+----------------------+----------------------+
"""


def test_table_older_layout_t4():
    t = smi.parse_table(OLD_T4_TABLE)
    assert (t.driver_version, t.cuda_version) == ("515.86.01", "11.7")
    [gpu] = t.gpus
    assert (gpu["name"], gpu["bus_id"], gpu["ecc"]) == ("Tesla T4", "00000000:00:04.0", "0")
    assert (gpu["memory_used_mib"], gpu["memory_total_mib"], gpu["fan_percent"], gpu["util_percent"]) == \
        (2, 15360, None, 4)
