"""``vllm serve MODEL ...`` of the lab: the real CLI's shape, log format and HTTP behaviour.

Sources (../shared/corpus/ and vLLM's code, cited per item):
  - startup log lines and their order (port opens only AFTER model load + KV cache init):
    vllm_startup_log_v0.10.2_tinyllama.txt; "non-default args" with 'port', 'api_key' (a list)
    and 'served_model_name' (a list): real vLLM logs (GitHub files, search index ids
    42514581982, 55664905340);
  - /health 200 empty body, /version {"version": ...}, /v1/* guarded by --api-key with 401
    {"error":"Unauthorized"}, /health and /version not guarded: vllm_api_key_and_health_behaviour.txt;
  - /v1/models shape: vllm_v1_models_and_health_responses.txt;
  - free-memory refusal: vllm/v1/worker/gpu_worker.py ``init_device`` (v0.10.x):
    "Free memory on device ({free}/{total} GiB) on startup is less than desired GPU memory
    utilization ({util}, {requested} GiB). Decrease GPU memory utilization or reduce GPU memory
    used by other processes." (values rounded to 2 decimals; seen verbatim in user reports);
  - no usable GPU: vllm_blackwell_sm120_errors.txt (b) EngineCore traceback tail
    "RuntimeError: CUDA error: no kernel image is available ..." is for a torch without sm_120; for
    a missing driver the lab prints torch's "Found no NVIDIA driver on your system" RuntimeError in
    the same EngineCore shape (SYNTHESISED combination);
  - no C compiler: vllm_triton_no_c_compiler.txt (Triton needs gcc at first use).
Lab knobs: env VLLM_LAB_LOAD_DELAY_S (default 8 s) = model load time; fault marker
/etc/lab/faults/vllm-crash-once (env VLLM_LAB_FAULT_DIR overrides the directory): the first
server after it appears exits 1 shortly after becoming ready and removes the marker.
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import vllm
from vllm import _lab_gpu as gpu_hw

GIB = 1024 ** 3
MODEL_SIZE_GIB = 2.0513  # corpus: "Model loading took 2.0513 GiB" (TinyLlama 1.1B)


def _ts():
    return time.strftime("%m-%d %H:%M:%S", time.localtime(gpu_hw.lab_now()))


class Log:
    def __init__(self, tag):
        self.tag = tag

    def __call__(self, where, msg, level="INFO"):
        prefix = "(%s pid=%d) " % (self.tag, os.getpid()) if self.tag else ""
        sys.stdout.write("%s%s %s [%s] %s\n" % (prefix, level, _ts(), where, msg))
        sys.stdout.flush()


def non_default_args(ns):
    """The dict vLLM logs as "non-default args", in its argparse order."""
    out = {"model_tag": ns.model}
    if ns.host is not None:
        out["host"] = ns.host
    if ns.port != 8000:
        out["port"] = ns.port
    if ns.api_key:
        out["api_key"] = [ns.api_key]
    out["model"] = ns.model
    if ns.dtype != "auto":
        out["dtype"] = ns.dtype
    if ns.max_model_len is not None:
        out["max_model_len"] = ns.max_model_len
    if ns.enforce_eager:
        out["enforce_eager"] = True
    if ns.served_model_name:
        out["served_model_name"] = ns.served_model_name
    if ns.gpu_memory_utilization != 0.9:
        out["gpu_memory_utilization"] = ns.gpu_memory_utilization
    return out


def parser():
    p = argparse.ArgumentParser(prog="vllm")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("model")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"))
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    s.add_argument("--max-model-len", type=int, default=None)
    s.add_argument("--served-model-name", nargs="+", default=None)
    s.add_argument("--dtype", default="auto")
    s.add_argument("--enforce-eager", action="store_true")
    s.add_argument("--max-num-seqs", type=int, default=None)
    s.add_argument("--trust-remote-code", action="store_true")
    s.add_argument("--download-dir", default=None)
    p.add_argument("--version", action="store_true")
    return p


def engine_error(log, lines):
    for line in lines:
        log("core.py:632", line, level="ERROR")
    sys.stdout.write("Process EngineCore_0:\n")
    sys.stdout.flush()


def check_gpu(ns, api, eng):
    """None when the lab GPU can host this server, else the exit status after logging the failure."""
    if not shutil.which(os.environ.get("CC") or "gcc") and not shutil.which("cc"):
        engine_error(eng, [
            '  File "/usr/lib/python3/dist-packages/triton/runtime/build.py", line 32, in _build',
            '    raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")'])
        sys.stdout.write("RuntimeError: Failed to find C compiler. Please specify via CC environment variable.\n")
        return 1
    st = gpu_hw.lab_driver_ok()
    if not st:
        engine_error(eng, [
            "    _ = torch.zeros(1, device=device)",
            "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
            "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
            "installed a driver from http://www.nvidia.com/Download/index.aspx"])
        return 1
    gpu = gpu_hw.lab_hw()["gpus"][0]
    total = int(gpu["memory_total_mib"]) * 1024 * 1024
    free = total - gpu_hw.lab_used_mib(gpu) * 1024 * 1024
    requested = total * ns.gpu_memory_utilization
    if free < requested:
        def gib(b):
            return round(b / GIB, 2)
        engine_error(eng, [
            "ValueError: Free memory on device (%s/%s GiB) on startup is less than desired GPU memory utilization "
            "(%s, %s GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
            % (gib(free), gib(total), ns.gpu_memory_utilization, gib(requested))])
        return 1
    return None


def completion_text(prompt, max_tokens):
    """Deterministic "generation": words picked by a hash of the prompt."""
    words = ["the", "lab", "model", "answers", "deterministically", "from", "a", "hash", "of", "your", "prompt"]
    h = hashlib.sha256(prompt.encode()).digest()
    n = max(1, min(int(max_tokens or 16), 64))
    return " " + " ".join(words[h[i % len(h)] % len(words)] for i in range(n))


def make_handler(ns, names, created, max_len):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "uvicorn"
        sys_version = ""

        def log_message(self, fmt, *args):
            sys.stdout.write('(APIServer pid=%d) INFO:     %s:%d - "%s %s HTTP/1.1" %s\n'
                             % (os.getpid(), self.client_address[0], self.client_address[1], self.command, self.path, args[1]))
            sys.stdout.flush()

        def _send(self, code, body=b"", ctype="application/json"):
            self.send_response(code)
            if body or code != 200 or ctype != "application/json":
                self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code, obj):
            self._send(code, json.dumps(obj, separators=(",", ":")).encode())

        def _authorized(self):
            if not ns.api_key or not self.path.startswith("/v1") or self.command == "OPTIONS":
                return True
            return self.headers.get("Authorization", "") == "Bearer " + ns.api_key

        def do_GET(self):
            if not self._authorized():
                return self._json(401, {"error": "Unauthorized"})
            path = self.path.split("?")[0]
            if path == "/health":
                return self._send(200, b"", ctype="")
            if path == "/version":
                return self._json(200, {"version": vllm.__version__})
            if path == "/v1/models":
                data = [{"id": n, "object": "model", "created": created, "owned_by": "vllm", "root": ns.model,
                         "parent": None, "max_model_len": max_len,
                         "permission": [{"id": "modelperm-" + hashlib.sha256(n.encode()).hexdigest()[:16],
                                         "object": "model_permission", "created": created,
                                         "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                                         "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                                         "organization": "*", "group": None, "is_blocking": False}]} for n in names]
                return self._json(200, {"object": "list", "data": data})
            if path == "/metrics":
                return self._send(200, b"vllm:num_requests_running 0.0\n", ctype="text/plain; version=0.0.4")
            return self._json(404, {"detail": "Not Found"})

        do_HEAD = do_GET

        def do_POST(self):
            if not self._authorized():
                return self._json(401, {"error": "Unauthorized"})
            length = int(self.headers.get("Content-Length") or 0)
            try:
                req = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return self._json(400, {"object": "error", "message": "invalid JSON", "type": "BadRequestError", "param": None, "code": 400})
            path = self.path.split("?")[0]
            if req.get("model") not in names:
                return self._json(404, {"object": "error", "message": "The model `%s` does not exist." % req.get("model"),
                                        "type": "NotFoundError", "param": None, "code": 404})
            if path == "/v1/completions":
                prompt = req.get("prompt", "")
                prompt = prompt[0] if isinstance(prompt, list) else str(prompt)
                text = completion_text(prompt, req.get("max_tokens", 16))
                rid = "cmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:32]
                return self._json(200, {"id": rid, "object": "text_completion", "created": created, "model": req["model"],
                                        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                                                     "stop_reason": None, "prompt_logprobs": None}],
                                        "usage": {"prompt_tokens": len(prompt.split()), "total_tokens": len(prompt.split()) + len(text.split()),
                                                  "completion_tokens": len(text.split()), "prompt_tokens_details": None}})
            if path == "/v1/chat/completions":
                msgs = req.get("messages") or [{}]
                prompt = str(msgs[-1].get("content", ""))
                text = completion_text(prompt, req.get("max_tokens", 16)).strip()
                rid = "chatcmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:32]
                return self._json(200, {"id": rid, "object": "chat.completion", "created": created, "model": req["model"],
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                     "finish_reason": "length"}],
                                        "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                                                  "total_tokens": len(prompt.split()) + len(text.split())}})
            return self._json(404, {"detail": "Not Found"})

    return H


def serve(ns):
    api = Log("APIServer")
    eng = Log("EngineCore_0")
    api("api_server.py:1882", "vLLM API server version %s" % vllm.__version__)
    api("utils.py:328", "non-default args: %s" % non_default_args(ns))
    max_len = ns.max_model_len or 2048
    api("__init__.py:1778", "Using max model len %d" % max_len)
    Log("")("__init__.py:241", "Automatically detected platform cuda.")
    eng("core.py:648", "Waiting for init message from front-end.")
    rc = check_gpu(ns, api, eng)
    if rc is not None:
        return rc
    gpu = gpu_hw.lab_hw()["gpus"][0]
    reserve_mib = int(int(gpu["memory_total_mib"]) * ns.gpu_memory_utilization)
    gpu_hw.lab_register_proc(os.path.realpath(sys.executable), reserve_mib)
    eng("gpu_model_runner.py:1921", "Starting to load model %s..." % ns.model)
    time.sleep(float(os.environ.get("VLLM_LAB_LOAD_DELAY_S", "8")))
    eng("default_loader.py:267", "Loading weights took 0.85 seconds")
    eng("gpu_model_runner.py:1975", "Model loading took %.4f GiB and 1.521577 seconds" % MODEL_SIZE_GIB)
    kv = reserve_mib / 1024.0 - MODEL_SIZE_GIB - 0.5
    eng("gpu_worker.py:276", "Available KV cache memory: %.2f GiB" % kv)
    eng("core.py:217", "init engine (profile, create kv cache, warmup model) took 3.81 seconds")
    names = ns.served_model_name or [ns.model]
    host = ns.host if ns.host is not None else "0.0.0.0"
    try:
        httpd = ThreadingHTTPServer((host, ns.port), make_handler(ns, names, int(gpu_hw.lab_now()), max_len))
    except OSError as e:
        api("launcher.py:36", "[Errno %d] error while attempting to bind on address ('%s', %d): %s" % (e.errno, host, ns.port, e.strerror), level="ERROR")
        gpu_hw.lab_unregister_proc()
        return 1
    api("api_server.py:1680", "Supported_tasks: ['generate']")
    api("api_server.py:1957", "Starting vLLM API server 0 on http://%s:%d" % (host, ns.port))
    api("launcher.py:36", "Available routes are:")
    for route, methods in (("/health", "GET"), ("/v1/models", "GET"), ("/version", "GET"), ("/v1/chat/completions", "POST"),
                           ("/v1/completions", "POST"), ("/metrics", "GET")):
        api("launcher.py:44", "Route: %s, Methods: %s" % (route, methods))
    sys.stdout.write("(APIServer pid=%d) INFO:     Started server process [%d]\n" % (os.getpid(), os.getpid()))
    sys.stdout.write("(APIServer pid=%d) INFO:     Waiting for application startup.\n" % os.getpid())
    sys.stdout.write("(APIServer pid=%d) INFO:     Application startup complete.\n" % os.getpid())
    sys.stdout.flush()

    def stop(*_):
        threading.Thread(target=httpd.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    fault = os.path.join(os.environ.get("VLLM_LAB_FAULT_DIR", "/etc/lab/faults"), "vllm-crash-once")
    if os.path.exists(fault):
        def crash():
            time.sleep(2)
            try:
                os.unlink(fault)
            except OSError:
                pass
            eng("core.py:700", "EngineCore encountered a fatal error (lab fault vllm-crash-once).", level="ERROR")
            gpu_hw.lab_unregister_proc()
            os._exit(1)
        threading.Thread(target=crash, daemon=True).start()
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        gpu_hw.lab_unregister_proc()
        sys.stdout.write("(APIServer pid=%d) INFO:     Shutting down\n" % os.getpid())
    return 0


def main(argv=None):
    ns = parser().parse_args(argv)
    if ns.version and not ns.command:
        print(vllm.__version__)
        return 0
    if ns.command != "serve":
        parser().print_help()
        return 2
    return serve(ns)


if __name__ == "__main__":
    sys.exit(main())
