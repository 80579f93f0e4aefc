#!/usr/bin/python3
"""ollama of the embedded lab (bin/ollama of the lab's ollama-linux-amd64.tgz). Stdlib only.

Real formats replayed (../shared/corpus/):
  - `--version` with/without a server, and client/server mismatch: ollama_cli_version_list_ps_outputs.txt
    (a)-(c) (all on stdout, as cmd/cmd.go's versionHandler prints them);
  - `list` / `ps` tables (Go text/tabwriter, padding 4; SIZE in decimal units "1.3 GB"; PROCESSOR
    "100% GPU" / "100% CPU"; UNTIL "4 minutes from now"): same file (d);
  - HTTP `/` "Ollama is running", `/api/version`, `/api/tags`, `/api/ps` (compact JSON; size_vram
    == size on GPU, 0 on CPU): ollama_api_version_tags_json.txt;
  - server log lines `msg="inference compute" ... library=CUDA compute=12.0 name=CUDA0
    description="NVIDIA GeForce RTX 5060 Ti" libdirs=ollama,cuda_v12 driver=12.8 pci_id=...
    type=discrete total=... available=...` (layout of line (a), values of (b)/(c)) when the lab
    driver works, else the CPU line (d) `id=cpu library=cpu compute="" name=cpu description=cpu
    libdirs=ollama driver="" pci_id="" type="" ...`; "server config" and "Listening on ... (version
    X)" lines: ollama_journal_gpu_discovery_lines.txt footnote (server/routes.go).
Lab-only: `pull` creates a small local fake model (no registry), `run` answers deterministically.
"""
import hashlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# @@LAB_COMMON@@

VERSION = "@@OLLAMA_VERSION@@"
KEEP_ALIVE_S = 300
KNOWN_SIZES = {"llama3.2:1b": 1321098329, "llama3.1:8b": 4920753328}  # corpus (d): 1.3 GB / 4.9 GB


def host_port():
    """OLLAMA_HOST -> (host, port); default 127.0.0.1:11434 (envconfig.Host)."""
    raw = os.environ.get("OLLAMA_HOST", "").strip()
    for pfx in ("http://", "https://"):
        if raw.startswith(pfx):
            raw = raw[len(pfx):]
    raw = raw.rstrip("/")
    if not raw:
        return "127.0.0.1", 11434
    if raw.startswith("["):
        h, _, p = raw[1:].partition("]:")
        return h, int(p or 11434)
    if ":" in raw:
        h, p = raw.rsplit(":", 1)
        return h or "127.0.0.1", int(p)
    return raw, 11434


def models_dir():
    return os.environ.get("OLLAMA_MODELS") or os.path.join(os.path.expanduser("~"), ".ollama", "models")


def full_name(name):
    return name if ":" in name else name + ":latest"


def model_facts(name):
    name = full_name(name)
    digest = hashlib.sha256(("lab-model:" + name).encode()).hexdigest()
    size = KNOWN_SIZES.get(name, 400000000 + int(digest[:6], 16) * 100)
    return {"name": name, "model": name, "size": size, "digest": digest,
            "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                        "parameter_size": "1.2B", "quantization_level": "Q4_K_M"}}


def human_bytes(n):
    """format.HumanBytes: decimal units, one decimal below 10."""
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            v = n / div
            return ("%.1f %s" % (v, unit)) if v < 10 else ("%d %s" % (int(v), unit))
    return "%d B" % n


def human_duration(secs):
    """docker/go-units HumanDuration."""
    s = int(secs)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return "%d seconds" % s
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return "%d minutes" % m
    h = m // 60
    if h == 1:
        return "About an hour"
    if h < 48:
        return "%d hours" % h
    return "%d days" % (h // 24)


def tabwrite(rows):
    """Go text/tabwriter (minwidth 0, padding 4, no trailing padding on the last cell)."""
    widths = [max(len(r[i]) for r in rows) + 4 for i in range(len(rows[0]) - 1)]
    return "".join("".join(c.ljust(w) for c, w in zip(r, widths)) + r[-1] + "\n" for r in rows)


def ts_rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


# ------------------------------------------------------------------ server
class Store:
    def __init__(self):
        self.dir = models_dir()
        self.loaded = {}   # name -> expires_at
        self.lock = threading.Lock()
        self.gpu = lab_driver_ok() is not None

    def manifest_path(self, name):
        base, tag = full_name(name).split(":", 1)
        return os.path.join(self.dir, "manifests", "registry.ollama.ai", "library", base, tag)

    def models(self):
        root = os.path.join(self.dir, "manifests", "registry.ollama.ai", "library")
        out = []
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                try:
                    with open(os.path.join(dirpath, f)) as fh:
                        m = json.load(fh)
                    m["modified_at_epoch"] = os.path.getmtime(os.path.join(dirpath, f))
                    out.append(m)
                except (OSError, ValueError):
                    pass
        return sorted(out, key=lambda m: -m["modified_at_epoch"])

    def pull(self, name):
        facts = model_facts(name)
        p = self.manifest_path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        blob = os.path.join(self.dir, "blobs", "sha256-" + facts["digest"])
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "w") as fh:
            fh.write("lab fake model weights for %s\n" % facts["name"])
        with open(p, "w") as fh:
            json.dump(facts, fh)
        return facts

    def get(self, name):
        for m in self.models():
            if m["name"] == full_name(name):
                return m
        return None

    def load(self, name):
        with self.lock:
            self.loaded[full_name(name)] = time.time() + KEEP_ALIVE_S
            self._account()

    def running(self):
        with self.lock:
            now = time.time()
            for n in [n for n, exp in self.loaded.items() if exp < now]:
                del self.loaded[n]
            self._account()
            return dict(self.loaded)

    def _account(self):
        total = 0
        for n in self.loaded:
            m = self.get(n) or model_facts(n)
            total += int(m["size"] * 1.1 / 1048576)
        if self.gpu and total:
            lab_register_proc(os.path.realpath(sys.argv[0]), total)
        else:
            lab_unregister_proc()


def log(level, source, msg, **kv):
    parts = ["time=%s" % ts_rfc3339(lab_now()), "level=%s" % level, "source=%s" % source, 'msg="%s"' % msg]
    for k, v in kv.items():
        parts.append("%s=%s" % (k, v))
    sys.stderr.write(" ".join(parts) + "\n")
    sys.stderr.flush()


def discovery_line():
    st = lab_driver_ok()
    if st:
        gpu = lab_hw()["gpus"][0]
        total = int(gpu["memory_total_mib"]) / 1024.0
        avail = (int(gpu["memory_total_mib"]) - lab_used_mib(gpu)) / 1024.0
        return ("types.go:42", "inference compute",
                [("id", gpu.get("uuid", "")), ("filter_id", '""'), ("library", "CUDA"), ("compute", gpu["compute_cap"]),
                 ("name", "CUDA0"), ("description", '"%s"' % gpu["name"]), ("libdirs", "ollama,cuda_v12"),
                 ("driver", st.get("cuda_version", "12.8")), ("pci_id", gpu["pci_address"]), ("type", "discrete"),
                 ("total", '"%.1f GiB"' % total), ("available", '"%.1f GiB"' % avail)])
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
    except (OSError, ValueError, IndexError):
        kb = 0
    mem = '"%.1f GiB"' % (kb / 1048576.0)
    return ("types.go:42", "inference compute",
            [("id", "cpu"), ("library", "cpu"), ("compute", '""'), ("name", "cpu"), ("description", "cpu"),
             ("libdirs", "ollama"), ("driver", '""'), ("pci_id", '""'), ("type", '""'), ("total", mem), ("available", mem)])


def serve():
    host, port = host_port()
    store = Store()
    log("INFO", "routes.go:1475", "server config",
        env='"map[OLLAMA_HOST:http://%s:%d OLLAMA_KEEP_ALIVE:5m0s OLLAMA_MODELS:%s]"' % (host, port, store.dir))
    try:
        httpd = ThreadingHTTPServer((host, port), make_handler(store))
    except OSError as e:
        sys.stderr.write("Error: listen tcp %s:%d: bind: %s\n" % (host, port, e.strerror.lower() if e.strerror else e))
        return 1
    log("INFO", "routes.go:1528", "Listening on %s:%d (version %s)" % (host, port, VERSION))
    src, msg, kv = discovery_line()
    parts = ["time=%s" % ts_rfc3339(lab_now()), "level=INFO", "source=%s" % src, 'msg="%s"' % msg] + ["%s=%s" % p for p in kv]
    sys.stderr.write(" ".join(parts) + "\n")
    sys.stderr.flush()
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        lab_unregister_proc()
    return 0


def make_handler(store):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stderr.write('[GIN] %s | %s | %15s | %-7s "%s"\n' % (
                time.strftime("%Y/%m/%d - %H:%M:%S"), args[1], self.client_address[0], self.command, self.path))

        def _send(self, code, body, ctype="application/json; charset=utf-8"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code, obj):
            self._send(code, json.dumps(obj, separators=(",", ":")).encode())

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/":
                return self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
            if path == "/api/version":
                return self._json(200, {"version": VERSION})
            if path == "/api/tags":
                out = []
                for m in store.models():
                    m = dict(m)
                    m["modified_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m.pop("modified_at_epoch")))
                    out.append(m)
                return self._json(200, {"models": out})
            if path == "/api/ps":
                out = []
                for n, exp in sorted(store.running().items()):
                    m = store.get(n) or model_facts(n)
                    out.append({"name": n, "model": n, "size": m["size"], "digest": m["digest"], "details": m["details"],
                                "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp)),
                                "size_vram": m["size"] if store.gpu else 0, "context_length": 4096})
                return self._json(200, {"models": out})
            return self._send(404, b"404 page not found", "text/plain")

        do_HEAD = do_GET

        def _body(self):
            n = int(self.headers.get("Content-Length") or 0)
            try:
                return json.loads(self.rfile.read(n) or b"{}")
            except ValueError:
                return {}

        def do_DELETE(self):
            req = self._body()
            p = store.manifest_path(req.get("model") or req.get("name") or "")
            if not os.path.exists(p):
                return self._json(404, {"error": "model '%s' not found" % (req.get("model") or req.get("name"))})
            os.unlink(p)
            return self._send(200, b"", "text/plain")

        def do_POST(self):
            path = self.path.split("?")[0]
            req = self._body()
            name = req.get("model") or req.get("name") or ""
            if path == "/api/pull":
                facts = store.pull(name)
                lines = [{"status": "pulling manifest"},
                         {"status": "pulling %s" % facts["digest"][:12], "digest": "sha256:" + facts["digest"],
                          "total": facts["size"], "completed": facts["size"]},
                         {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
                if req.get("stream") is False:
                    return self._json(200, {"status": "success"})
                return self._send(200, "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode(),
                                  "application/x-ndjson")
            if path in ("/api/generate", "/api/chat"):
                if not store.get(name):
                    return self._json(404, {"error": "model '%s' not found" % full_name(name)})
                store.load(name)
                if path == "/api/generate":
                    prompt = str(req.get("prompt", ""))
                else:
                    prompt = str((req.get("messages") or [{}])[-1].get("content", ""))
                words = ["lab", "ollama", "answers", "deterministically", "on", "the", "GPU" if store.gpu else "CPU"]
                h = hashlib.sha256(prompt.encode()).digest()
                text = " ".join(words[h[i] % len(words)] for i in range(8)) + "."
                base = {"model": full_name(name), "created_at": ts_rfc3339(time.time()), "done": True, "done_reason": "stop"}
                if path == "/api/generate":
                    base["response"] = text
                else:
                    base["message"] = {"role": "assistant", "content": text}
                return self._json(200, base)
            return self._send(404, b"404 page not found", "text/plain")

    return H


# ------------------------------------------------------------------ client
def url(path):
    host, port = host_port()
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return "http://%s:%d%s" % (host, port, path)


def call(path, body=None, method=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url(path), data=data, method=method or ("POST" if data else "GET"),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


def server_down():
    sys.stderr.write("Error: could not connect to ollama app, is it running?\n")  # cmd.go wording
    return 1


def cmd_version():
    try:
        server = json.loads(call("/api/version", timeout=5))["version"]
    except (OSError, ValueError, KeyError):
        server = ""
        print("Warning: could not connect to a running Ollama instance")
    if server:
        print("ollama version is %s" % server)
    if server != VERSION:
        print("Warning: client version is %s" % VERSION)
    return 0


def cmd_list():
    try:
        models = json.loads(call("/api/tags"))["models"]
    except OSError:
        return server_down()
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    now = time.time()
    for m in models:
        mod = time.mktime(time.strptime(m["modified_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        rows.append([m["name"], m["digest"][:12], human_bytes(m["size"]), human_duration(now - mod) + " ago"])
    sys.stdout.write(tabwrite(rows))
    return 0


def cmd_ps():
    try:
        models = json.loads(call("/api/ps"))["models"]
    except OSError:
        return server_down()
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        exp = time.mktime(time.strptime(m["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        proc = "100% GPU" if m.get("size_vram") == m["size"] else "100% CPU"
        rows.append([m["name"], m["digest"][:12], human_bytes(m["size"]), proc, str(m.get("context_length", 4096)),
                     human_duration(exp - time.time()) + " from now"])
    sys.stdout.write(tabwrite(rows))
    return 0


def cmd_pull(name):
    try:
        lines = call("/api/pull", {"model": name}).splitlines()
    except OSError:
        return server_down()
    for line in lines:
        st = json.loads(line)
        if "total" in st:
            print("%s... 100%% ▕██████████████████▏ %s" % (st["status"], human_bytes(st["total"])))
        else:
            print(st["status"] + " ")
    return 0


def cmd_run(name, prompt):
    try:
        try:
            out = call("/api/generate", {"model": name, "prompt": prompt, "stream": False})
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
            rc = cmd_pull(name)
            if rc:
                return rc
            out = call("/api/generate", {"model": name, "prompt": prompt, "stream": False})
    except OSError:
        return server_down()
    print(json.loads(out)["response"] + "\n")
    return 0


def main(argv):
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("Usage:\n  ollama [flags]\n  ollama [command]\n\nAvailable Commands:\n  serve       Start ollama\n"
              "  pull        Pull a model from a registry\n  run         Run a model\n  list        List models\n"
              "  ps          List running models\n  rm          Remove a model\n\nFlags:\n  -v, --version   Show version information")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in ("-v", "--version"):
        return cmd_version()
    if cmd in ("serve", "start"):
        return serve()
    if cmd in ("list", "ls"):
        return cmd_list()
    if cmd == "ps":
        return cmd_ps()
    if cmd == "pull" and rest:
        return cmd_pull(rest[0])
    if cmd == "run" and rest:
        prompt = " ".join(rest[1:]) if len(rest) > 1 else sys.stdin.read()
        return cmd_run(rest[0], prompt)
    if cmd == "rm" and rest:
        try:
            call("/api/delete", {"model": rest[0]}, method="DELETE")
        except urllib.error.HTTPError:
            sys.stderr.write("Error: model '%s' not found\n" % rest[0])
            return 1
        except OSError:
            return server_down()
        print("deleted '%s'" % rest[0])
        return 0
    sys.stderr.write('Error: unknown command "%s" for "ollama"\n' % cmd)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
