"""Ollama parsers on real outputs (tests/fixtures/corpus/ollama_*)."""
from provisioners.parsers import ollama
from tests.fixtures.corpus.samples import sample, text

CLI = "ollama_cli_version_list_ps_outputs.txt"
JOURNAL = "ollama_journal_gpu_discovery_lines.txt"


def test_version_server_not_running():
    v = ollama.parse_version_output(sample(CLI, "b"))
    assert (v.server_version, v.client_version, v.server_reachable) == (None, "0.17.5", False)


def test_version_server_running_same_version():
    part = sample(CLI, "a").split("server running (same version):")[1]
    v = ollama.parse_version_output(part)
    assert (v.server_version, v.client_version, v.server_reachable) == ("0.12.9", "0.12.9", True)


def test_version_mismatch():
    v = ollama.parse_version_output(sample(CLI, "c"))
    assert (v.server_version, v.client_version) == ("0.6.2", "0.4.7")


def test_list_and_ps():
    d = sample(CLI, "d")
    listing, empty_ps, loaded_ps = d.split("$ ollama ")[1:4]
    assert ollama.parse_list(listing) == [
        {"name": "llama3.2:1b", "id": "baf6a787fdff", "size": "1.3 GB", "modified": "2 seconds ago"},
        {"name": "llama3.1:8b", "id": "46e0c10c039e", "size": "4.9 GB", "modified": "32 seconds ago"}]
    assert ollama.parse_ps(empty_ps) == []
    [row] = ollama.parse_ps(loaded_ps)
    assert (row["name"], row["processor"], row["context"], row["gpu_percent"], row["cpu_percent"]) == \
        ("llama3.1:8b", "100% GPU", "4096", 100, 0)


def test_processor_variants():
    assert ollama.parse_processor("100% CPU") == (100, 0)
    assert ollama.parse_processor("48%/52% CPU/GPU") == (48, 52)
    assert ollama.parse_processor("?") == (None, None)


def test_inference_compute_new_and_old_formats():
    l4 = ollama.parse_inference_compute(sample(JOURNAL, "a"))[0]
    assert (l4["library"], l4["compute"], l4["description"], l4["total"], l4["gpu"]) == \
        ("CUDA", "8.9", "NVIDIA L4", "22.5 GiB", True)
    cpu = ollama.parse_inference_compute(sample(JOURNAL, "d"))[0]
    assert (cpu["library"], cpu["gpu"], cpu["compute"], cpu["total"]) == ("cpu", False, None, "121.7 GiB")
    t4 = ollama.parse_inference_compute(sample(JOURNAL, "f"))[0]
    assert (t4["library"], t4["compute"], t4["description"], t4["driver"]) == ("cuda", "7.5", "Tesla T4", "11.7")
    b = ollama.parse_inference_compute(sample(JOURNAL, "b"))
    assert [(x["library"], x.get("description")) for x in b] == [("CUDA", "NVIDIA GeForce RTX 5060 Ti"), ("cpu", None)]


def test_skipped_devices():
    [skip] = ollama.skipped_devices(sample(JOURNAL, "e"))
    assert skip["device"] == "NVIDIA GB10" and skip["cc"] == "1210"


def test_api_version():
    assert ollama.parse_api_version(text("ollama_api_version_tags_json.txt")) == "0.5.1"
    assert ollama.parse_api_version('{"version":"0.12.9"}') == "0.12.9"
    assert ollama.parse_api_version("Ollama is running") is None
