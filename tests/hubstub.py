"""A small stand-in for the Hugging Face Hub on 127.0.0.1, for download tests without network.

It answers the requests huggingface_hub's ``snapshot_download`` / ``hf_hub_download`` make (as read in
huggingface_hub 2.4's ``hf_api.py`` and ``file_download.py``):

* ``GET /api/{models,spaces,datasets}/{org}/{name}[/revision/{rev}]``: ``{"id", "sha", "siblings"}``;
* ``GET /api/.../{org}/{name}/tree/{rev}?recursive=...``: ``[{"type", "path", "size", "oid"}, ...]``;
* ``HEAD`` / ``GET /[spaces/|datasets/]{org}/{name}/resolve/{rev}/{path}``: the file, with the headers
  ``X-Repo-Commit``, ``ETag`` and ``Content-Length``.

Every request is logged in ``requests`` as ``(method, path)``. ``stop_during`` names a file whose GET sends
half of its bytes and then stops the server for good (a hub that goes away mid-download): later
connections are refused.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

RepoKey = tuple[str, str]  # (repo_type, repo_id)


class StubHub:
    """Serves ``repos``: ``{(repo_type, repo_id): {path in repo: bytes}}``, one commit per repo."""

    def __init__(self, repos: dict[RepoKey, dict[str, bytes]], stop_during: str | None = None):
        self.repos = repos
        self.stop_during = stop_during
        self.commits = {
            key: hashlib.sha1(repr(sorted(files)).encode() + key[1].encode()).hexdigest()
            for key, files in repos.items()
        }
        self.requests: list[tuple[str, str]] = []
        self.connections: set[socket.socket] = set()  # open ones, closed by stop()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False  # stop() closes the connections instead
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.stopped = False

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StubHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection (the client's kept-alive ones too)."""
        if self.stopped:
            return
        self.stopped = True
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the client

    def __enter__(self) -> StubHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def downloads(self) -> list[str]:
        """``repo_id/path`` of every file whose content was requested (GET on /resolve/)."""
        out = []
        for method, path in self.requests:
            if method == "GET" and "/resolve/" in path:
                repo, _, rest = path.lstrip("/").removeprefix("spaces/").partition("/resolve/")
                out.append(f"{repo}/{rest.partition('/')[2]}")
        return out


def _handler_for(hub: StubHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            with hub._lock:
                hub.connections.add(self.connection)

        def finish(self) -> None:
            with hub._lock:
                hub.connections.discard(self.connection)
            super().finish()

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _answer(self, head: bool) -> None:
            path = urlsplit(self.path).path
            hub.log(self.command, path)
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if parts[0] == "api":
                self._api(parts[1:])
            else:
                self._resolve(parts, head)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _not_found(self, code: str) -> None:
            self._send(404, json.dumps({"error": code}).encode(), {"X-Error-Code": code})

        def _repo(self, kind: str, org: str, name: str, rev: str) -> RepoKey | None:
            key = (kind, f"{org}/{name}")
            if key not in hub.repos:
                self._not_found("RepoNotFound")
                return None
            if rev not in ("main", hub.commits[key]):
                self._not_found("RevisionNotFound")
                return None
            return key

        def _api(self, parts: list[str]) -> None:
            # {models,spaces,datasets}/org/name[/{revision,tree}/rev]
            if len(parts) == 3:
                parts = [*parts, "revision", "main"]
            if len(parts) < 5 or parts[0] not in ("models", "spaces", "datasets"):
                return self._not_found("EntryNotFound")
            key = self._repo(parts[0][:-1], parts[1], parts[2], parts[4])
            if key is None:
                return None
            files = hub.repos[key]
            if parts[3] == "revision":
                info = {
                    "id": key[1],
                    "sha": hub.commits[key],
                    "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                }
                return self._send(
                    200, json.dumps(info).encode(), {"Content-Type": "application/json"}
                )
            if parts[3] == "tree":
                return self._send(
                    200, json.dumps(_tree(files)).encode(), {"Content-Type": "application/json"}
                )
            return self._not_found("EntryNotFound")

        def _resolve(self, parts: list[str], head: bool) -> None:
            kind = "model"
            if parts[0] in ("spaces", "datasets"):
                kind, parts = parts[0][:-1], parts[1:]
            if len(parts) < 5 or parts[2] != "resolve":
                return self._not_found("EntryNotFound")
            key = self._repo(kind, parts[0], parts[1], parts[3])
            if key is None:
                return None
            filename = "/".join(parts[4:])
            data = hub.repos[key].get(filename)
            if data is None:
                return self._not_found("EntryNotFound")
            headers = {
                "X-Repo-Commit": hub.commits[key],
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            }
            if head or filename != hub.stop_during:
                return self._send(200, data, headers)
            # a hub that goes away mid-download: half the bytes, then nothing listens any more
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            threading.Thread(target=hub.stop, daemon=True).start()
            return None

    return Handler


def _tree(files: dict[str, bytes]) -> list[dict[str, object]]:
    """The recursive tree listing: folders, then files, with git-like blob ids."""
    folders = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
    entries: list[dict[str, object]] = [
        {"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
        for f in folders
    ]
    for path in sorted(files):
        data = files[path]
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        entries.append({"type": "file", "path": path, "size": len(data), "oid": blob})
    return entries
