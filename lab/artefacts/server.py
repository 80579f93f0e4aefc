"""Plain-HTTP server of the lab artefacts (``<state_dir>/artefacts/www``) on loopback.

The guest reaches it as ``http://10.0.2.2:BASE+80/`` through qemu user-mode networking
(ARCHITECTURE.md "The lab"). Static files only (stdlib ``http.server``); the tree may be rebuilt
(atomically renamed) while serving, e.g. when the GPU profile changes.
"""
from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lab.artefacts import artefacts_dir, www_dir


class _Handler(SimpleHTTPRequestHandler):
    log_file = None
    extra: dict[str, str] = {}

    def translate_path(self, path):
        # /<prefix>/... of an extra directory (e.g. the lab's cloud image) bypasses the www tree,
        # which is replaced wholesale on every rebuild
        parts = path.split("?", 1)[0].split("#", 1)[0].lstrip("/").split("/", 1)
        if parts[0] in self.extra:
            import posixpath
            from urllib.parse import unquote
            rest = posixpath.normpath("/" + unquote(parts[1] if len(parts) > 1 else "")).lstrip("/")
            return str(Path(self.extra[parts[0]]) / rest)
        return super().translate_path(path)

    def log_message(self, fmt, *args):  # to the lab log file, never the console
        if self.log_file:
            with open(self.log_file, "a") as fh:
                fh.write("%s - %s\n" % (self.address_string(), fmt % args))


class ServerHandle:
    """A running artefact server. Attributes: ``host``, ``port``, ``url`` (host view)."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd, self._thread = httpd, thread
        self.host, self.port = httpd.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()


def start(state_dir: Path, host: str = "127.0.0.1", port: int = 17080,
          extra_dirs: dict[str, Path] | None = None) -> ServerHandle:
    """Serve ``<state_dir>/artefacts/www`` on ``host:port`` in a daemon thread; returns the handle.

    ``extra_dirs``: ``{"images": Path(...)}`` also serves that directory under ``/images/``
    (e.g. the lab's base image for ``lab/lab-catalog.yml``'s cloud image URL).

    Raises:
        OSError: the port is taken.
    """
    www = www_dir(state_dir)
    www.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(type("H", (_Handler,), {"log_file": str(artefacts_dir(state_dir) / "server.log"),
                                                     "extra": {k: str(v) for k, v in (extra_dirs or {}).items()}}),
                                directory=str(www))
    ThreadingHTTPServer.allow_reuse_address = True
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="lab-artefacts", daemon=True)
    t.start()
    return ServerHandle(httpd, t)
