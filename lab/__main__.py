"""``python -m lab up|down|status|image|profile NAME`` - the embedded lab's command line.

- ``up [--profile NAME] [--timeout S]``: build/reuse the base image, start the lab in the
  background (fakepve https, artefact server, guest watcher; log ``.lab/lab.log``) and print the
  endpoints once ready. Idempotent: a running lab is reported, not restarted.
- ``down``: stop the lab (SIGTERM, then SIGKILL after 60 s) and any stray lab qemu. Idempotent.
- ``status``: what runs (server pid, VMs, qemu pid, ports, profile). Exit 0 running, 3 not.
- ``image [--force]``: build (or reuse) the cached base image; prints path and sha256.
- ``profile [NAME]``: show or select the GPU profile (used at the next guest start).
Exit status 1 with an operator message (never a traceback) on errors.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from lab import state
from provisioners.errors import DeployError
from provisioners.redact import redact


def _say(text: str = "") -> None:
    print(redact(text), flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_pid(paths: state.LabPaths) -> int | None:
    """pid of the running lab server (from ``.lab/lab.pid``), or None."""
    try:
        pid = int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return None
    return pid if b"lab" in cmd and _pid_alive(pid) else None


def _ready(paths: state.LabPaths) -> dict | None:
    try:
        return json.loads(paths.ready.read_text())
    except (OSError, ValueError):
        return None


def _print_endpoints(info: dict) -> None:
    ports = info["ports"]
    pw_env = "LAB_PVE_PASSWORD"
    pw_note = "default 'lab-secret'" if not os.environ.get(pw_env) else "as you set it"
    _say(f"lab up (pid {info['pid']}, GPU profile {info.get('profile')})")
    _say(f"  Proxmox VE API (fakepve): {info['pve_url']}/api2/json  user {info['pve_user']}, "
         f"password from ${pw_env} ({pw_note}), CA {info['pve_ca']}")
    _say(f"    e.g. ProxmoxAPI('127.0.0.1', port={ports['pve']}, user='root@pam', "
         f"password=os.environ.get('{pw_env}', 'lab-secret'), verify_ssl='{info['pve_ca']}')")
    art = f"http://127.0.0.1:{ports['artefacts']} (guest: http://10.0.2.2:{ports['artefacts']})"
    _say(f"  artefact server: {art if info.get('artefacts') else 'not running (lab.artefacts missing)'}")
    _say(f"  guest SSH: 127.0.0.1:{ports['ssh']}  key {info['ssh_key']}  "
         f"(once VM is started via the API)")
    _say(f"  guest vLLM 127.0.0.1:{ports['vllm']} -> 8000, Ollama 127.0.0.1:{ports['ollama']} -> 11434")
    _say(f"  cloud image volume: {info['image']['volid']} sha256 {info['image']['sha256']}")
    _say(f"  log .lab/lab.log, guest console {info.get('console_log')}; stop with `python -m lab down`")


def cmd_up(args) -> int:
    from lab import image, server

    paths = state.paths()
    ports = state.ports()
    pid = server_pid(paths)
    if pid:
        info = _ready(paths)
        if info:
            _print_endpoints(info)
        else:
            _say(f"lab already starting (pid {pid}); see {paths.log}")
        return 0
    # fail early and clearly when another lab (or a lab test) holds the lock
    state.LabLock(paths.lock).acquire().release()
    if args.profile:
        server.set_profile(paths, args.profile)
    img = image.build()  # in the foreground: the first build takes minutes and prints progress
    _say(f"base image {img.qcow2} (sha256 {img.sha256})")
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.ready.unlink(missing_ok=True)
    with open(paths.log, "ab") as logf:
        log_start = logf.tell()
        proc = subprocess.Popen([sys.executable, "-m", "lab", "_serve"], cwd=state.REPO_ROOT,
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(state.REPO_ROOT)})
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        info = _ready(paths)
        if info and info.get("pid") == proc.pid:
            _print_endpoints(info)
            return 0
        if proc.poll() is not None:
            with open(paths.log, "rb") as fh:  # only this start's lines, not earlier runs'
                fh.seek(log_start)
                tail = fh.read().decode(errors="replace").splitlines()[-15:]
            raise DeployError(what="the lab did not start",
                              cause="\n".join(tail), remedy=f"see {paths.log}",
                              exit_code=proc.returncode)
        time.sleep(0.5)
    raise DeployError(what=f"the lab did not become ready within {args.timeout:.0f} s",
                      remedy=f"see {paths.log}; stop it with `python -m lab down`")


def cmd_down(args) -> int:
    from lab.guest import kill_strays

    paths = state.paths()
    pid = server_pid(paths)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.3)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        _say(f"lab stopped (pid {pid})")
    else:
        _say("lab was not running")
    killed = kill_strays(paths)
    if killed:
        _say(f"stopped stray lab qemu: {', '.join(map(str, killed))}")
    paths.ready.unlink(missing_ok=True)
    return 0


def cmd_status(args) -> int:
    from lab import image
    from lab.guest import stray_qemus
    from lab.server import current_profile

    paths = state.paths()
    pid = server_pid(paths)
    info = _ready(paths) if pid else None
    img = image.cached_image()
    if args.json:
        _say(json.dumps({"running": bool(pid), "pid": pid, "info": info,
                         "image": str(img.qcow2) if img else None}, indent=1))
        return 0 if pid else 3
    _say(f"lab: {'running, pid ' + str(pid) if pid else 'not running'}")
    _say(f"GPU profile: {current_profile(paths)}")
    _say(f"ports: {state.ports().as_dict()}")
    _say(f"base image: {img.qcow2 if img else 'not built (python -m lab image)'}")
    if info:
        for vm in info.get("vms", []):
            q = f"qemu pid {vm['qemu_pid']}" if vm.get("qemu_pid") else "no qemu"
            _say(f"  VM {vm['vmid']} {vm['name']}: {vm['status']}, {q}")
        if not info.get("vms"):
            _say("  no VMs")
    for qpid, vm_dir in stray_qemus(paths):
        if not pid:
            _say(f"  stray qemu pid {qpid} ({vm_dir}) - `python -m lab down` stops it")
    return 0 if pid else 3


def cmd_image(args) -> int:
    from lab import image

    img = image.build(force=args.force)
    image.prune(img)
    _say(f"{img.qcow2}\nsha256 {img.sha256}\nvolume {image.VOLUME_ID}")
    return 0


def cmd_profile(args) -> int:
    from lab import server

    paths = state.paths()
    if args.name:
        server.set_profile(paths, args.name)
        running = " (the running lab switches within seconds)" if server_pid(paths) else ""
        _say(f"GPU profile: {args.name}; the guest sees it from its next start{running}")
    else:
        _say(server.current_profile(paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the lab in the background")
    up.add_argument("--profile", help="GPU profile (default: the current one, rtx5060ti)")
    up.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for ready")
    down = sub.add_parser("down", help="stop the lab and its guest")
    down.add_argument("--timeout", type=float, default=60.0)
    st = sub.add_parser("status", help="what runs")
    st.add_argument("--json", action="store_true")
    im = sub.add_parser("image", help="build or reuse the base image")
    im.add_argument("--force", action="store_true")
    pr = sub.add_parser("profile", help="show or select the GPU profile")
    pr.add_argument("name", nargs="?")
    sub.add_parser("_serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "_serve":
            from lab import server
            return server.serve()
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "image": cmd_image,
                "profile": cmd_profile}[args.cmd](args)
    except DeployError as err:
        print(redact(str(err)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `python -m lab status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
