"""vLLM log parser on real logs (tests/fixtures/corpus/vllm_*)."""
from provisioners.parsers import vllm
from tests.fixtures.corpus.samples import sample, text


def test_startup_facts_v0_10_2():
    log = vllm.parse_log(text("vllm_startup_log_v0.10.2_tinyllama.txt"))
    assert log.version == "0.10.2"
    assert (log.api_url, log.host, log.port) == ("http://0.0.0.0:8000", "0.0.0.0", 8000)
    assert log.started
    assert (log.kv_cache_gib, log.kv_cache_tokens, log.model_load_gib) == (101.47, 4836272, 2.0513)
    assert log.errors == []


def test_sm120_not_compatible_docker_prefix():
    log = vllm.parse_log(sample("vllm_blackwell_sm120_errors.txt", "a"))
    [err] = log.errors
    assert (err.kind, err.gpu, err.sm) == ("torch-lacks-gpu-arch", "NVIDIA GeForce RTX 5070 Ti", "sm_120")
    assert err.supported == ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
    assert not log.started


def test_no_kernel_image():
    for label in ("b", "c"):
        [err] = vllm.parse_log(sample("vllm_blackwell_sm120_errors.txt", label)).errors
        assert err.kind == "torch-lacks-gpu-arch"
        assert "no kernel image is available" in err.text


def test_triton_no_c_compiler():
    kinds = [e.kind for e in vllm.parse_log(text("vllm_triton_no_c_compiler.txt")).errors]
    assert kinds == ["triton-no-c-compiler"]


def test_insufficient_free_memory_vllm_wording():
    # vLLM's message as raised by vllm/v1/worker/utils.py request_memory() (vllm-project/vllm),
    # quoted in public reports; synthesised into a log line here.
    line = ("(EngineCore_0 pid=357) ValueError: Free memory on device cuda:0 (12.18/23.56 GiB) on startup is "
            "less than desired GPU memory utilization (0.92, 21.67 GiB). Decrease GPU memory utilization or "
            "reduce GPU memory used by other processes.\n"
            "(APIServer pid=291) RuntimeError: Engine core initialization failed. See root cause above.\n")
    errs = vllm.parse_log(line).errors
    assert [e.kind for e in errs] == ["insufficient-free-vram", "engine-init-failed"]
    assert (errs[0].free_gib, errs[0].total_gib, errs[0].utilization, errs[0].requested_gib) == \
        (12.18, 23.56, 0.92, 21.67)
