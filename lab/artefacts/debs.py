"""Build the lab's Debian packages with ``dpkg-deb`` (the fake NVIDIA driver, CUDA, ubuntu-drivers).

Package names, versions and relations follow the real archives so that the product's apt logic
is exercised as on Ubuntu 24.04 (DESIGN.md §4):

- ``nvidia-driver-BRANCH[-open]`` (metapackage) -> ``nvidia-dkms-BRANCH[-open]`` (the kernel
  module, built "by DKMS" in postinst) + ``nvidia-utils-BRANCH`` (``nvidia-smi``). The two
  flavours conflict (``Provides``/``Conflicts: nvidia-dkms-kernel``), so installing ``-open``
  replaces the closed one.
- DKMS postinst output and the failure shape (``Error! Bad return status for module build on
  kernel: K (x86_64)`` / ``Consult /var/lib/dkms/nvidia/V/build/make.log for more information.``,
  exit status 10, dpkg leaving ``nvidia-dkms-*`` half-configured and ``nvidia-driver-*``
  unconfigured): real transcripts (GitHub files, search index ids 56740960466 - nvidia-dkms-545 on
  Ubuntu 24.04 - and 56947061997). The make.log body is SYNTHESISED (marked inside it).
- The driver install asks for a reboot like Ubuntu's update-notifier hook:
  ``/var/run/reboot-required`` (``*** System restart required ***``) and ``.pkgs``.
- ``cuda-keyring`` 1.1-1 installs ``/usr/share/keyrings/cuda-archive-keyring.gpg`` and
  ``/etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list`` (NVIDIA's file names; corpus
  ``nvcc_--version_12.8_and_13.0.txt`` (c) shows the install steps) pointing at the lab's flat
  CUDA repository; ``cuda-toolkit-12-8`` puts the toolkit in ``/usr/local/cuda-12.8`` and the
  ``/usr/local/cuda`` alternative; ``cuda`` and ``cuda-drivers`` exist so that "never install
  these" is testable (``cuda-drivers`` pulls the closed driver, as NVIDIA's does pull its own).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lab.artefacts import elfmod, programs
from lab.profiles import CUDA_VERSIONS, DRIVER_VERSIONS, Profile

#: every file and the .deb archives get this mtime (2025-01-01T00:00:00Z): byte-stable builds
SOURCE_DATE_EPOCH = 1735689600
MAINTAINER = "GPU LLM deployer lab <lab@localhost>"
UBUNTU_DRIVERS_VERSION = "1:0.9.7.6ubuntu3.1"
CUDA_TOOLKIT_VERSION = "12.8.1-1"
KMOD_UNIT = "nvidia-lab-kmod.service"


@dataclass
class Deb:
    """One package: control fields, files ``{abs path: (bytes, mode)}``, symlinks, maintainer scripts."""

    name: str
    version: str
    arch: str = "amd64"
    section: str = "misc"
    description: str = ""
    depends: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    replaces: list[str] = field(default_factory=list)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)
    conffiles: list[str] = field(default_factory=list)

    @property
    def filename(self) -> str:
        """``name_version-without-epoch_arch.deb``."""
        return f"{self.name}_{self.version.split(':')[-1]}_{self.arch}.deb"

    def control(self, installed_kib: int) -> str:
        fields = [("Package", self.name), ("Version", self.version), ("Architecture", self.arch),
                  ("Maintainer", MAINTAINER), ("Installed-Size", str(installed_kib)),
                  ("Depends", ", ".join(self.depends)), ("Conflicts", ", ".join(self.conflicts)),
                  ("Replaces", ", ".join(self.replaces)), ("Provides", ", ".join(self.provides)),
                  ("Section", self.section), ("Priority", "optional")]
        desc = self.description or self.name
        lines = [f"{k}: {v}" for k, v in fields if v]
        lines.append(f"Description: {desc}\n Built by the GPU LLM deployer lab (lab/artefacts); not NVIDIA's or Ubuntu's package.")
        return "\n".join(lines) + "\n"


def _touch_tree(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)
    os.utime(root, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))


def build_deb(deb: Deb, work: Path, out_dir: Path) -> Path:
    """Lay ``deb`` out under ``work`` and run ``dpkg-deb --build``; returns the .deb path in ``out_dir``.

    Raises:
        subprocess.CalledProcessError: dpkg-deb failed (its stderr is in the exception).
    """
    root = work / deb.name
    shutil.rmtree(root, ignore_errors=True)
    (root / "DEBIAN").mkdir(parents=True)
    size = 0
    for path, (data, mode) in sorted(deb.files.items()):
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
        size += len(data)
    for path, target in sorted(deb.symlinks.items()):
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)
    (root / "DEBIAN" / "control").write_text(deb.control(max(1, size // 1024)))
    for name, text in deb.scripts.items():
        s = root / "DEBIAN" / name
        s.write_text(text)
        s.chmod(0o755)
    if deb.conffiles:
        (root / "DEBIAN" / "conffiles").write_text("".join(c + "\n" for c in deb.conffiles))
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    _touch_tree(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / deb.filename
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH))
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(out)],
                   check=True, capture_output=True, text=True, env=env)
    return out


def _prog(name: str, **consts: object) -> tuple[bytes, int]:
    return programs.render(name, **consts).encode(), 0o755


def _sh(body: str) -> str:
    return "#!/bin/sh\nset -e\n" + body.strip("\n") + "\n\nexit 0\n"


def _make_log(version: str) -> str:
    return (
        f"DKMS make.log for nvidia-{version} for kernel $KVER (x86_64)\n"
        "$(date)\n"
        "# SYNTHESISED by the lab's driver-install-fails profile (a real make.log is the kernel build output)\n"
        "make[1]: Entering directory '/usr/src/linux-headers-$KVER'\n"
        f"  CC [M]  /var/lib/dkms/nvidia/{version}/build/nvidia/nv.o\n"
        f"/var/lib/dkms/nvidia/{version}/build/nvidia/nv.c:42:10: fatal error: lab-fault-injection.h: No such file or directory\n"
        "   42 | #include \"lab-fault-injection.h\"\n"
        "      |          ^~~~~~~~~~~~~~~~~~~~~~~\n"
        "compilation terminated.\n"
        f"make[3]: *** [scripts/Makefile.build:243: /var/lib/dkms/nvidia/{version}/build/nvidia/nv.o] Error 1\n"
        f"make[2]: *** [/usr/src/linux-headers-$KVER/Makefile:1934: /var/lib/dkms/nvidia/{version}/build] Error 2\n"
        "make[1]: Leaving directory '/usr/src/linux-headers-$KVER'\n"
        "make: *** [Makefile:82: modules] Error 2\n"
    )


def driver_debs(branch: int, fails: bool) -> list[Deb]:
    """The packages of one driver branch: utils, dkms (closed + open), driver metapackages (closed + open).

    ``fails``: the dkms postinst fails like a DKMS build failure; such packages get a LOWER
    Debian revision (``-0ubuntu0.1`` < ``-0ubuntu1``) so that republishing the good ones lets
    apt upgrade over the half-configured ones and a re-run converges.
    """
    version = DRIVER_VERSIONS[branch]
    cuda = CUDA_VERSIONS[branch]
    good = f"{version}-0ubuntu1"
    debver = f"{version}-0ubuntu0.1" if fails else good
    debs = [Deb(f"nvidia-utils-{branch}", debver, section="non-free/utils",
                description=f"NVIDIA driver support binaries (lab replay of nvidia-smi {version})",
                depends=["python3"], files={"/usr/bin/nvidia-smi": _prog("nvidia_smi", DRIVER_VERSION=version, CUDA_VERSION=cuda)})]
    for flavour in ("closed", "open"):
        sfx = "-open" if flavour == "open" else ""
        dkms = f"nvidia-dkms-{branch}{sfx}"
        ko = elfmod.module_bytes(elfmod.nvidia_modinfo(version, flavour))
        unit = (
            "[Unit]\n"
            "Description=NVIDIA kernel module (lab: replays what nvidia.ko does on the lab GPU profile)\n"
            "DefaultDependencies=no\n"
            "After=systemd-modules-load.service local-fs.target lab-gpu-hw.service\n"
            "Before=sysinit.target\n"
            "ConditionPathExists=/usr/lib/nvidia-lab/nvidia-lab-kmod\n\n"
            "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            "ExecStart=/usr/lib/nvidia-lab/nvidia-lab-kmod load\n\n"
            "[Install]\nWantedBy=sysinit.target\n"
        )
        build = (
            'KVER="$(uname -r)"\n'
            f'echo "Loading new nvidia-{version} DKMS files..."\n'
            'echo "Building for $KVER"\n'
            'echo "Building for architecture x86_64"\n'
            'echo "Building initial module for $KVER"\n'
        )
        if fails:
            build += (
                f'mkdir -p /var/lib/dkms/nvidia/{version}/build\n'
                f'cat > /var/lib/dkms/nvidia/{version}/build/make.log <<EOF\n{_make_log(version)}EOF\n'
                'echo "Error! Bad return status for module build on kernel: $KVER (x86_64)"\n'
                f'echo "Consult /var/lib/dkms/nvidia/{version}/build/make.log for more information."\n'
                'exit 10\n'
            )
        else:
            build += (
                'mkdir -p "/lib/modules/$KVER/updates/dkms"\n'
                f'install -m 0644 /usr/src/nvidia-{version}/nvidia.ko.lab "/lib/modules/$KVER/updates/dkms/nvidia.ko"\n'
                'depmod -a "$KVER" || true\n'
                'echo "Done."\n'
                f'systemctl enable {KMOD_UNIT} >/dev/null 2>&1 || '
                f'ln -sf /lib/systemd/system/{KMOD_UNIT} /etc/systemd/system/sysinit.target.wants/{KMOD_UNIT}\n'
                'echo "*** System restart required ***" > /var/run/reboot-required\n'
                f'echo "{dkms}" >> /var/run/reboot-required.pkgs\n'
            )
        postinst = _sh('if [ "$1" = "configure" ]; then\n' + build + "fi")
        prerm = _sh(f'if [ "$1" = "remove" ]; then\n  systemctl disable {KMOD_UNIT} >/dev/null 2>&1 || true\n'
                    '  rm -f /lib/modules/*/updates/dkms/nvidia.ko\n  depmod -a "$(uname -r)" 2>/dev/null || true\nfi')
        debs.append(Deb(dkms, debver, section="non-free/kernel",
                        description=f"NVIDIA DKMS package ({flavour} kernel module {version}, lab)",
                        depends=["python3", "kmod"], provides=["nvidia-dkms-kernel"], conflicts=["nvidia-dkms-kernel"],
                        replaces=["nvidia-dkms-kernel"],
                        files={f"/usr/src/nvidia-{version}/nvidia.ko.lab": (ko, 0o644),
                               "/usr/lib/nvidia-lab/nvidia-lab-kmod": _prog("nvidia_kmod", DRIVER_VERSION=version, FLAVOUR=flavour, CUDA_VERSION=cuda),
                               f"/lib/systemd/system/{KMOD_UNIT}": (unit.encode(), 0o644)},
                        scripts={"postinst": postinst, "prerm": prerm}))
        other = f"nvidia-driver-{branch}" if flavour == "open" else f"nvidia-driver-{branch}-open"
        debs.append(Deb(f"nvidia-driver-{branch}{sfx}", debver, section="non-free/libs",
                        description=f"NVIDIA driver metapackage ({flavour} kernel module, lab)",
                        depends=[f"{dkms} (= {debver})", f"nvidia-utils-{branch} (= {debver})"],
                        conflicts=[other]))
    return debs


def ubuntu_drivers_deb() -> Deb:
    """``ubuntu-drivers-common`` with the lab's ``ubuntu-drivers``."""
    return Deb("ubuntu-drivers-common", UBUNTU_DRIVERS_VERSION, section="admin",
               description="Detect and install additional Ubuntu driver packages (lab replay)",
               depends=["python3", "apt"], files={"/usr/bin/ubuntu-drivers": _prog("ubuntu_drivers")})


def cuda_debs(cuda_repo_url: str, keyring_gpg: bytes) -> list[Deb]:
    """cuda-keyring (pointing at ``cuda_repo_url``), cuda-toolkit-12-8, cuda, cuda-drivers."""
    prefix = "/usr/local/cuda-12.8"
    keyring = Deb("cuda-keyring", "1.1-1", arch="all", section="misc",
                  description="GPG keyring for the CUDA repository (lab)",
                  files={"/usr/share/keyrings/cuda-archive-keyring.gpg": (keyring_gpg, 0o644),
                         "/etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list": (
                             f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {cuda_repo_url} /\n".encode(), 0o644)},
                  conffiles=["/etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list"])
    toolkit = Deb("cuda-toolkit-12-8", CUDA_TOOLKIT_VERSION, section="devel",
                  description="CUDA Toolkit 12.8 (lab: nvcc replay + demo_suite samples)", depends=["python3"],
                  files={f"{prefix}/bin/nvcc": _prog("cuda_tools", TOOL="nvcc"),
                         f"{prefix}/extras/demo_suite/deviceQuery": _prog("cuda_tools", TOOL="deviceQuery"),
                         f"{prefix}/extras/demo_suite/vectorAdd": _prog("cuda_tools", TOOL="vectorAdd"),
                         f"{prefix}/version.json": (b'{\n   "cuda" : {\n      "name" : "CUDA SDK",\n      "version" : "12.8.1"\n   }\n}\n', 0o644)},
                  scripts={"postinst": _sh('if [ "$1" = "configure" ]; then\n'
                                           f'  update-alternatives --install /usr/local/cuda cuda {prefix} 128\n'
                                           f'  update-alternatives --install /usr/local/cuda-12 cuda-12 {prefix} 128\nfi'),
                           "prerm": _sh('if [ "$1" = "remove" ]; then\n'
                                        f'  update-alternatives --remove cuda {prefix} || true\n'
                                        f'  update-alternatives --remove cuda-12 {prefix} || true\nfi')})
    drivers = Deb("cuda-drivers", f"{DRIVER_VERSIONS[570]}-1", section="metapackages",
                  description="CUDA driver metapackage (lab: pulls the CLOSED driver, like NVIDIA's pulls its own)",
                  depends=["nvidia-driver-570"])
    cuda = Deb("cuda", CUDA_TOOLKIT_VERSION, section="metapackages",
               description="CUDA metapackage (lab: toolkit + cuda-drivers)",
               depends=[f"cuda-toolkit-12-8 (>= {CUDA_TOOLKIT_VERSION})", "cuda-drivers"])
    return [keyring, toolkit, drivers, cuda]


def profile_debs(profile: Profile) -> list[Deb]:
    """The /apt repository's packages for ``profile`` (without the cuda repo's)."""
    debs = [ubuntu_drivers_deb()]
    for branch in profile.driver_branches:
        debs += driver_debs(branch, profile.driver_install_fails)
    return debs
