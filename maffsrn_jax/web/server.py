"""Serves a built site: `python -m maffsrn_jax.web serve DIR --port P`.

Binds 127.0.0.1 only (a local preview, not a public server). Every response carries
`Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy: require-corp`,
which make the page cross-origin isolated, the condition for SharedArrayBuffer and so for
multi-threaded WASM; `.wasm`, `.mjs` and `.onnx` get their MIME types (WebAssembly's
streaming compile insists on application/wasm). `Cache-Control: no-cache` makes the browser
revalidate, so a rebuilt site is picked up on reload. Ctrl-C stops it.
"""

from __future__ import annotations

import functools
import http.server
import os
import sys
from pathlib import Path

from maffsrn_jax.web.site import WebError

HOST = "127.0.0.1"
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".png": "image/png",
}
HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def end_headers(self) -> None:
        for key, value in HEADERS.items():
            self.send_header(key, value)
        super().end_headers()


class QuietHandler(Handler):
    """`Handler` without the log line per request (for benchmarks)."""

    def log_message(self, *args) -> None:
        pass


def make_server(directory: str | os.PathLike, port: int, *,
                quiet: bool = False) -> http.server.ThreadingHTTPServer:
    """The server (not yet serving) for a built site; port 0 picks a free port. `quiet`
    leaves out the log line per request."""
    d = Path(directory)
    if not (d / "index.html").is_file() or not (d / "config.json").is_file():
        raise WebError(f"{d}: not a built site (no index.html and config.json); build one "
                       f"with python -m maffsrn_jax.web build --output {d}")
    if not 0 <= port <= 65535:
        raise WebError(f"--port {port}: must be in 0..65535")
    handler = functools.partial(QuietHandler if quiet else Handler, directory=str(d))
    try:
        return http.server.ThreadingHTTPServer((HOST, port), handler)
    except OSError as e:
        raise WebError(f"--port {port}: cannot listen on {HOST} ({e.strerror or e})") from None


def serve(directory: str | os.PathLike, port: int) -> int:
    httpd = make_server(directory, port)
    with httpd:
        print(f"serving {directory} at http://{HOST}:{httpd.server_address[1]}/ "
              "(Ctrl-C stops)", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0
