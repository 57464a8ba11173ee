"""A local file host on 127.0.0.1 that answers as Hugging Face's does, for the
download tests (nothing leaves the machine).

``GET|HEAD /<repo>/resolve/<revision>/<file>`` answers 302 to ``/cdn/<file>``
with the headers the hub sends for an LFS file (``X-Linked-Etag`` with the
sha256 in quotes, ``X-Linked-Size``, ``X-Repo-Commit``). ``/cdn/<file>`` and
``/plain/<file>`` serve the bytes, honouring ``Range: bytes=N-`` with 206.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import dataclass, field


@dataclass
class Hub:
    """files: name → bytes; etags: name → the digest to publish (default: the
    true sha256; None: publish none, as for a file kept outside LFS);
    cut_after: name → stop sending after this many bytes once (a dropped
    connection); requests: (method, path, Range header) seen."""

    files: dict[str, bytes] = field(default_factory=dict)
    etags: dict[str, str | None] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def etag(self, name: str) -> str | None:
        if name in self.etags:
            return self.etags[name]
        return hashlib.sha256(self.files[name]).hexdigest()


def _handler(hub: Hub):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _answer(self, body: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range")))
            parts = self.path.split("/")
            if "resolve" in parts:
                name = parts[-1]
                if name not in hub.files:
                    self.send_error(404)
                    return
                self.send_response(302)
                self.send_header("Location", f"/cdn/{name}")
                etag = hub.etag(name)
                if etag is not None:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(hub.files[name])))
                self.send_header("ETag", '"0123abcd"')  # the git blob's id, never a sha256
                self.send_header("X-Repo-Commit", "c0ffee" * 6 + "c0ff")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if len(parts) != 3 or parts[1] not in ("cdn", "plain") or parts[2] not in hub.files:
                self.send_error(404)
                return
            data = hub.files[parts[2]]
            start = 0
            wanted = self.headers.get("Range")
            if wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
                start = int(wanted[6:-1])
                if start >= len(data):  # as S3, nginx and the hub's CDN answer a range past the end
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            cut = hub.cut_after.pop(parts[2], None)
            self.wfile.write(data[start:cut] if cut is not None else data[start:])
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True

        def do_GET(self):
            self._answer(True)

        def do_HEAD(self):
            self._answer(False)

    return Handler


def serve(hub: Hub):
    """Start ``hub`` on a free port of 127.0.0.1; returns (hub with url set, stop())."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"

    def stop():
        server.shutdown()
        server.server_close()

    return hub, stop
