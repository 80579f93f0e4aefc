"""Living-documentation reports: one folder per behave run, evidence attached to every format.

Every behave run writes ``reports/<UTC timestamp>/`` (e.g. ``reports/20261129T170500Z/``) holding

- ``index.html``   behave-html-pretty-formatter 1.16.1 (``-f html-pretty``), evidence embedded
- ``behave.json``  behave's JSON formatter; evidence as base64 ``embeddings`` of each step
- ``junit/``       behave's JUnit reporter (``--junit --junit-directory``); evidence in
                   ``system-out`` through behave's stdout capture

and ``reports/latest`` is a symlink to the newest one. behave opens its output files *before*
``before_all`` runs, so :func:`prepare_run_dir` is called when ``environment.py`` is imported
(behave imports it before it creates the formatters) and behave.ini names the outputs through
the ``reports/latest/`` symlink.

Redaction: :func:`attach` redacts before encoding (base64/gzip would hide a secret from any later
text search); :func:`wrap_formatter_streams` redacts what formatters print; :func:`redact_tree`
sweeps the written files once more at exit (the JUnit XML is written by behave directly).
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from provisioners.redact import redact

#: environment variable naming the reports root (default ``reports`` under the working directory,
#: which is where behave.ini's relative ``outfiles`` point when behave runs from the repo root)
REPORTS_DIR_ENV = "DEPLOYER_REPORTS_DIR"
LATEST = "latest"

# html-pretty embeds a *file's content* when the data is a short string naming an existing file
# (Embed.get_file_path_from_data); such text must never be read from disk unredacted.
_HTML_FILENAME_LIMIT = 256


def reports_root() -> Path:
    """The folder holding the per-run report folders: ``$DEPLOYER_REPORTS_DIR`` or ``./reports``."""
    return Path(os.environ.get(REPORTS_DIR_ENV) or "reports")


def prepare_run_dir(root: Path | None = None, now: _dt.datetime | None = None) -> Path:
    """Create ``<root>/<UTC timestamp>/`` (``%Y%m%dT%H%M%SZ``, ``-2``, ``-3``... appended when two
    runs start in the same second) and point ``<root>/latest`` at it.

    The symlink is replaced atomically (new link + ``os.replace``) so a reader never sees it
    missing. Returns the new folder. Raises ``OSError`` when ``root`` is not writable, or when
    ``<root>/latest`` is a real folder (left by something else; never deleted here).
    """
    root = Path(root) if root is not None else reports_root()
    now = now or _dt.datetime.now(_dt.timezone.utc)
    root.mkdir(parents=True, exist_ok=True)
    stamp = now.astimezone(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = root / stamp
    n = 1
    while True:
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            n += 1
            run_dir = root / f"{stamp}-{n}"
    (run_dir / "junit").mkdir()
    latest = root / LATEST
    if latest.exists() and not latest.is_symlink():
        raise OSError(f"{latest} is a real folder, not the symlink this tool maintains; move it away")
    tmp = root / f".{LATEST}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)  # relative: the reports folder can be moved or archived whole
    os.replace(tmp, latest)
    return run_dir


def latest_index(root: Path | None = None) -> Path:
    """Path of the newest HTML report, ``<root>/latest/index.html`` (resolved); ``FileNotFoundError``
    when no run has written one yet."""
    root = Path(root) if root is not None else reports_root()
    index = (root / LATEST / "index.html")
    if not index.is_file():
        raise FileNotFoundError(f"no report yet: {index} is missing; run behave (e.g. `make verify`) first")
    return index.resolve()


def _mime_is_text(mime: str) -> bool:
    return mime.startswith("text/") or mime in ("application/json", "application/xml")


def attach(context: Any, name: str, text: str, mime: str = "text/plain") -> str:
    """Attach evidence ``text`` under the caption ``name`` to every report of the current step.

    - JSON (behave's formatter): ``context.attach(mime, bytes)`` -> base64 in ``embeddings``;
      the caption is the first line of the attached text (the JSON schema has no caption field).
    - HTML (behave-html-pretty-formatter): ``formatter.embed(mime, text, caption=name)``.
    - JUnit: printed to stdout, which behave captures into the scenario's ``system-out``.

    The text is redacted first; the redacted text is returned. ``mime`` is a text type
    (``text/plain``, ``text/markdown``, ``application/json``...). Call it during a step or from
    ``after_step`` (behave runs that hook before formatters record the step's result).
    """
    clean = redact(text if isinstance(text, str) else str(text))
    if len(clean) < _HTML_FILENAME_LIMIT and "\n" not in clean:
        try:
            if Path(clean).is_file():
                clean += "\n"
        except (OSError, ValueError):
            pass
    html_mime = mime if mime.startswith("text/") else "text/plain"
    runner = getattr(context, "_runner", None)
    formatters = list(getattr(runner, "formatters", None) or [])
    payload = f"{name}\n{clean}".encode("utf-8")
    for formatter in formatters:
        try:
            if hasattr(formatter, "embedding"):
                formatter.embedding(mime if _mime_is_text(mime) else "text/plain", payload)
            elif callable(getattr(formatter, "embed", None)):
                formatter.embed(html_mime, clean, caption=name)
        except (IndexError, KeyError, AttributeError, TypeError):
            # Outside a step (e.g. after_scenario) the JSON formatter has no step to hold the
            # embedding; the printed copy below still reaches the console/JUnit.
            continue
    print(f"----- evidence: {name} -----\n{clean}\n----- end of {name} -----")
    return clean


class RedactingStream:
    """A text stream wrapper whose ``write`` passes through :func:`provisioners.redact.redact`.

    Everything else (``flush``, ``isatty``, ``encoding``, ``fileno``...) is delegated, so behave's
    colour detection and our TTY detection still see the real terminal.
    """

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    @property
    def wrapped(self) -> TextIO:
        return self._stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def wrap_formatter_streams(formatters: list[Any]) -> int:
    """Wrap the output stream of each behave formatter in a :class:`RedactingStream`.

    behave creates the formatters (and opens their files) before any hook runs, so this is done
    from ``before_all``. Formatters keep the stream in more than one attribute (``plain`` gives it
    to a ``ModelPrinter``), so every attribute of the formatter and of its direct helpers that *is*
    the stream is replaced. Returns the number of formatters wrapped.
    """
    count = 0
    for formatter in formatters:
        stream = getattr(formatter, "stream", None)
        if stream is None or isinstance(stream, RedactingStream):
            continue
        wrapper = RedactingStream(stream)
        holders = [formatter] + [v for v in vars(formatter).values() if hasattr(v, "__dict__") and v is not stream]
        opener = getattr(formatter, "stream_opener", None)
        if opener is not None:
            holders.append(opener)
        for holder in holders:
            try:
                attrs = vars(holder)
            except TypeError:
                continue
            for key, value in list(attrs.items()):
                if value is stream:
                    setattr(holder, key, wrapper)
        count += 1
    return count


def pin_junit_directory(config: Any, run_dir: Path, root: Path | None = None) -> bool:
    """Point behave's JUnit reporter at ``run_dir/junit`` when it is configured to write into
    ``<root>/latest/junit`` (behave.ini). The reporter resolves its folder at the end of each
    feature, long after the run started; another run moving ``latest`` meanwhile must not
    receive this run's XML. An explicit ``--junit-directory`` elsewhere is kept. Returns True
    when the folder was pinned."""
    root = Path(root) if root is not None else reports_root()
    configured = getattr(config, "junit_directory", None)
    if not configured:
        return False
    if os.path.abspath(configured) != os.path.abspath(root / LATEST / "junit"):
        return False
    config.junit_directory = str(Path(run_dir) / "junit")
    return True


def redact_tree(folder: Path) -> list[Path]:
    """Redact every regular file under ``folder`` in place (UTF-8 text; undecodable bytes kept).

    The last line of defence for files no stream wrapper sees (behave's JUnit XML). Returns the
    files that were changed. Symlinks are not followed.
    """
    changed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return changed
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        raw = path.read_bytes()
        text = raw.decode("utf-8", "surrogateescape")
        clean = redact(text)
        if clean != text:
            path.write_bytes(clean.encode("utf-8", "surrogateescape"))
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m provisioners.report`` prints the path of the newest HTML report (for
    ``make report``; CI has no browser). Exit 1 with a hint when there is none."""
    try:
        print(latest_index())
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
