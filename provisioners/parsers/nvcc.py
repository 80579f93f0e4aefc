"""Parse ``nvcc --version`` (CUDA toolkit compiler).

Real output (``tests/fixtures/corpus/nvcc_--version_12.8_and_13.0.txt``)::

    nvcc: NVIDIA (R) Cuda compiler driver
    Cuda compilation tools, release 12.8, V12.8.93
    Build cuda_12.8.r12.8/compiler.35583870_0
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["NvccVersion", "parse_version", "parse"]

_RELEASE = re.compile(r"Cuda compilation tools, release (?P<major>\d+)\.(?P<minor>\d+), (?P<build>V[\d.]+)")


@dataclass(frozen=True)
class NvccVersion:
    """The toolkit version: ``release`` ``"12.8"``, ``major`` 12, ``minor`` 8, ``build``
    ``"V12.8.93"`` (12.8 update 1)."""

    release: str
    major: int
    minor: int
    build: str

    @property
    def as_tuple(self) -> tuple[int, int]:
        """``(12, 8)`` for comparisons with a minimum CUDA version."""
        return (self.major, self.minor)


def parse_version(text: str) -> NvccVersion | None:
    """The first ``Cuda compilation tools, release X.Y, VX.Y.Z`` line in ``text``, or ``None``
    (nvcc missing: ``nvcc: command not found``, or unrelated text)."""
    m = _RELEASE.search(text or "")
    if not m:
        return None
    major, minor = int(m.group("major")), int(m.group("minor"))
    return NvccVersion(release=f"{major}.{minor}", major=major, minor=minor, build=m.group("build"))


#: alias of :func:`parse_version` (the guest CUDA component calls ``nvcc.parse``).
parse = parse_version
