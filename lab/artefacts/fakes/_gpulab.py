# ---- lab GPU hardware boundary (common code; the build inlines it into every fake program) ----
# The lab's fake GPU programs are stdlib-only Python so that they run on the Debian guest as
# shipped. They read:
#   - the guest "hardware" JSON that the lab hands qemu as fw_cfg opt/lab/gpu
#     (/sys/firmware/qemu_fw_cfg/by_name/opt/lab/gpu/raw; env LAB_GPU_HW overrides the path);
#   - the kernel-module state the driver package's boot unit writes to /run/nvidia-lab/
#     (env LAB_NVIDIA_RUN overrides), valid only for the boot it was written in (boot_id);
#   - the GPU-memory ledger /run/nvidia-lab/procs/<pid>.json that vLLM/Ollama write while they
#     "hold" VRAM (so nvidia-smi lists them and vLLM's free-memory check sees them).
# Env LAB_FAKE_NOW (epoch seconds) fixes the clock and LAB_BOOT_ID the boot id, for tests.
import json as _json
import os as _os
import time as _time

FW_CFG_PATH = "/sys/firmware/qemu_fw_cfg/by_name/opt/lab/gpu/raw"
# copy made readable at boot by the image's lab-gpu-hw.service (the fw_cfg file is root-only)
PUBLISHED_HW = "/run/lab-gpu/hw.json"


def lab_hw():
    """The guest hardware dict ({"profile", "secure_boot", "gpus": [...]}); no file -> no GPU."""
    env = _os.environ.get("LAB_GPU_HW")
    hw = {}
    for path in ([env] if env else [FW_CFG_PATH, PUBLISHED_HW]):
        try:
            with open(path, "rb") as fh:
                hw = _json.loads(fh.read().rstrip(b"\0").decode())
            break
        except (OSError, ValueError):
            continue
    hw.setdefault("gpus", [])
    hw.setdefault("secure_boot", False)
    hw.setdefault("profile", "none")
    hw.setdefault("ubuntu_drivers", [])
    return hw


def lab_run_dir():
    return _os.environ.get("LAB_NVIDIA_RUN") or "/run/nvidia-lab"


def lab_boot_id():
    env = _os.environ.get("LAB_BOOT_ID")
    if env:
        return env
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown"


def lab_now():
    env = _os.environ.get("LAB_FAKE_NOW")
    return float(env) if env else _time.time()


def lab_driver_state():
    """The loaded kernel module of THIS boot: {"version", "branch", "flavour", "status", ...} or None."""
    try:
        with open(_os.path.join(lab_run_dir(), "state.json")) as fh:
            st = _json.load(fh)
    except (OSError, ValueError):
        return None
    if st.get("boot_id") != lab_boot_id():
        return None
    return st


def lab_driver_ok():
    """The driver state when the module is loaded and initialised the GPU, else None."""
    st = lab_driver_state()
    if st and st.get("status") == "ok" and lab_hw()["gpus"]:
        return st
    return None


def _pid_alive(pid):
    try:
        _os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lab_gpu_procs():
    """Live VRAM holders: [{"pid", "name", "used_mib", "type"}], sorted by pid."""
    d = _os.path.join(lab_run_dir(), "procs")
    out = []
    try:
        names = _os.listdir(d)
    except OSError:
        return out
    for n in names:
        if not n.endswith(".json"):
            continue
        try:
            with open(_os.path.join(d, n)) as fh:
                p = _json.load(fh)
        except (OSError, ValueError):
            continue
        if p.get("static") or _pid_alive(int(p.get("pid", 0))):
            out.append(p)
    return sorted(out, key=lambda p: int(p["pid"]))


def lab_register_proc(name, used_mib, pid=None, ptype="C"):
    """Record that process ``pid`` holds ``used_mib`` MiB of VRAM (best effort)."""
    pid = pid or _os.getpid()
    d = _os.path.join(lab_run_dir(), "procs")
    try:
        _os.makedirs(d, exist_ok=True)
        tmp = _os.path.join(d, ".%d.tmp" % pid)
        with open(tmp, "w") as fh:
            _json.dump({"pid": pid, "name": name, "used_mib": int(used_mib), "type": ptype}, fh)
        _os.replace(tmp, _os.path.join(d, "%d.json" % pid))
    except OSError:
        pass


def lab_unregister_proc(pid=None):
    try:
        _os.unlink(_os.path.join(lab_run_dir(), "procs", "%d.json" % (pid or _os.getpid())))
    except OSError:
        pass


def lab_used_mib(gpu):
    """VRAM in use (MiB): the driver's baseline plus every live holder."""
    return int(gpu.get("memory_baseline_used_mib", 0)) + sum(int(p["used_mib"]) for p in lab_gpu_procs())
# ---- end of common code ----
