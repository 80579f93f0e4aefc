"""Turn the sources in ``lab/artefacts/fakes/`` into the single-file programs the packages ship.

A fake program's source holds ``# @@LAB_COMMON@@`` (replaced by ``fakes/_gpulab.py``, the
hardware-boundary code every program shares) and ``@@NAME@@`` tokens (replaced by build-time
constants such as the driver version of the package being built). Inlining keeps every package
self-contained: no shared helper package that a real system would not have.
"""
from __future__ import annotations

import re
import types
from pathlib import Path

FAKES_DIR = Path(__file__).resolve().parent / "fakes"
_TOKEN = re.compile(r"@@([A-Z_]+)@@")


def render(name: str, **consts: object) -> str:
    """Source text of fake program ``fakes/<name>.py`` with the common code and ``consts`` filled in.

    Raises:
        KeyError: a ``@@TOKEN@@`` in the source has no value in ``consts``.
    """
    text = (FAKES_DIR / f"{name}.py").read_text()
    common = (FAKES_DIR / "_gpulab.py").read_text()
    text = text.replace("# @@LAB_COMMON@@", common, 1)

    def sub(m: re.Match) -> str:
        if m.group(1) == "LAB_COMMON":
            return m.group(0)
        return str(consts[m.group(1)])

    return _TOKEN.sub(sub, text)


def load(name: str, **consts: object) -> types.ModuleType:
    """Import the rendered program as a module (for unit tests of its render functions)."""
    mod = types.ModuleType(f"lab_fake_{name}")
    mod.__file__ = str(FAKES_DIR / f"{name}.py")
    exec(compile(render(name, **consts), mod.__file__, "exec"), mod.__dict__)
    return mod
