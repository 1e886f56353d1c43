"""A loopback HTTP server for tests: static files, injected faults, and a stand-in for the Hugging Face Hub.

It serves, on ``http://127.0.0.1:PORT``:

* ``/files/<prefix>/<path>``: files of a folder registered with :meth:`LoopbackServer.serve_folder`, with
  HTTP ``Range`` support (what a plain web server or a CDN does);
* the Hub endpoints huggingface_hub calls (read from its source: ``hf_api.py`` ``model_info`` /
  ``dataset_info`` / ``list_repo_tree``, ``file_download.py`` ``get_hf_file_metadata`` / ``http_get``):
  ``GET /api/{models,datasets}/OWNER/NAME[/revision/REV]``, ``GET /api/{models,datasets}/OWNER/NAME/tree/REV[/PATH]``
  (paginated with a ``Link: <...>; rel="next"`` header), and ``HEAD``/``GET`` on
  ``/OWNER/NAME/resolve/REV/FILE`` (models) and ``/datasets/OWNER/NAME/resolve/REV/FILE`` with ``X-Repo-Commit``,
  ``ETag`` and ``Content-Length``. Large ("LFS") files answer with a 302 to ``http://localhost:PORT/cdn/SHA256``
  plus ``X-Linked-Etag`` / ``X-Linked-Size``, as the Hub sends them to its CDN; ``localhost`` is another host
  name than ``127.0.0.1``, so clients must drop the Authorization header there, and :attr:`cdn_auth` records
  whether one arrived;
* faults: :meth:`add_fault` makes the next requests of a path answer 429 or 5xx, or drop the connection
  half-way through the body.

Private repos answer 401 with ``X-Error-Code: RepoNotFound`` (as the Hub does) unless the request carries
``Authorization: Bearer <token>``. Nothing is ever executed from what is served.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_MIN_BYTES = 1024  # files at least this big are served the LFS way (302 to the CDN)


@dataclass
class Repo:
    """One Hub repo: ``files`` maps repo paths to bytes; one commit, reachable as ``main`` or by its hash."""

    kind: str  # "model" | "dataset"
    repo_id: str
    files: dict[str, bytes]
    commit: str
    token: str | None = None  # private repo: this bearer token is required
    blobs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes, for the CDN

    def __post_init__(self) -> None:
        for data in self.files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data


class LoopbackServer:
    """Threaded loopback server; use as a context manager. ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, tree_page_size: int = 1000) -> None:
        self.folders: dict[str, Path] = {}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.faults: dict[str, list[int | str]] = {}
        self.hits: Counter[str] = Counter()  # requests per path
        self.cdn_auth: list[bool] = []  # whether each CDN request carried an Authorization header
        self.tree_page_size = tree_page_size
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # -- set-up -----------------------------------------------------------------------------------

    def serve_folder(self, prefix: str, folder: Path) -> str:
        """Serve ``folder`` under ``/files/<prefix>``; returns that URL."""
        self.folders[prefix.strip("/")] = Path(folder)
        return f"{self.url}/files/{prefix.strip('/')}"

    def add_repo(self, kind: str, repo_id: str, files: dict[str, bytes], commit: str | None = None,
                 token: str | None = None) -> Repo:
        commit = commit or hashlib.sha1(repr(sorted(files)).encode() + repo_id.encode()).hexdigest()
        repo = Repo(kind, repo_id, dict(files), commit, token)
        self.repos[(kind, repo_id)] = repo
        return repo

    def add_fault(self, path: str, *faults: int | str) -> None:
        """The next requests of ``path`` (URL path, e.g. ``/files/x/recording.000001.tar``) fail in turn:
        an int is an HTTP status (429 comes with ``Retry-After: 0``), ``"drop"`` sends the headers and half
        the body and then closes the connection. ``"always500"`` makes every request fail."""
        with self._lock:
            self.faults.setdefault(path, []).extend(faults)

    def _next_fault(self, path: str) -> int | str | None:
        with self._lock:
            self.hits[path] += 1
            queue = self.faults.get(path)
            if not queue:
                return None
            return queue[0] if queue[0] == "always500" else queue.pop(0)

    # -- life cycle -------------------------------------------------------------------------------

    def __enter__(self) -> LoopbackServer:  # noqa: PYI034 - Python 3.10 has no typing.Self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler_for(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers; every answer has a Content-Length

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        # -- helpers ------------------------------------------------------------------------------

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj: object, headers: dict[str, str] | None = None) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str | None = None, extra: dict[str, str] | None = None) -> None:
            headers = {"X-Error-Code": code} if code else {}
            self._send(status, json.dumps({"error": code or str(status)}).encode(), {**headers, **(extra or {})})

        def _data(self, data: bytes, headers: dict[str, str], fault: int | str | None) -> None:
            """Send ``data`` honouring Range; ``fault == "drop"`` cuts the body in half and closes."""
            start, status = 0, 200
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                if m is None:
                    return self._error(400)
                start = int(m[1])
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            body = data[start:]
            self.send_response(status)
            for k, v in {"Accept-Ranges": "bytes", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "HEAD":
                return None
            if fault == "drop":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # abrupt end: the client sees fewer bytes than announced
                return None
            self.wfile.write(body)
            return None

        def _authorized(self, repo: Repo) -> bool:
            return repo.token is None or self.headers.get("Authorization") == f"Bearer {repo.token}"

        # -- routing ------------------------------------------------------------------------------

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            path = parts.path
            fault = server._next_fault(path)
            if fault in (429,):
                return self._error(429, extra={"Retry-After": "0"})
            if isinstance(fault, int):
                return self._error(fault)
            if fault == "always500":
                return self._error(500)
            if path.startswith("/files/"):
                return self._static(unquote(path[len("/files/"):]), fault)
            if path.startswith("/cdn/"):
                return self._cdn(path[len("/cdn/"):], fault)
            if path.startswith("/api/"):
                return self._api(path[len("/api/"):], parse_qs(parts.query))
            return self._resolve(path.lstrip("/"), fault)

        def _static(self, rel: str, fault: int | str | None) -> None:
            prefix, _, name = rel.partition("/")
            folder = server.folders.get(prefix)
            if folder is None or ".." in name.split("/"):
                return self._error(404)
            f = folder / name
            if not f.is_file():
                return self._error(404)
            return self._data(f.read_bytes(), {"Content-Type": "application/octet-stream"}, fault)

        def _cdn(self, sha: str, fault: int | str | None) -> None:
            server.cdn_auth.append("Authorization" in self.headers)
            for repo in server.repos.values():
                if sha in repo.blobs:
                    return self._data(repo.blobs[sha], {"ETag": f'"{sha}"'}, fault)
            return self._error(404)

        def _repo(self, kind: str, repo_id: str) -> Repo | None:
            return server.repos.get((kind, repo_id))

        def _check(self, repo: Repo | None, revision: str) -> bool:
            """Send the Hub's error for a missing/private repo or unknown revision; True when all is well."""
            if repo is None or not self._authorized(repo):
                self._error(401 if repo is not None else 404, "RepoNotFound")
                return False
            if revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", {"X-Repo-Commit": repo.commit})
                return False
            return True

        def _api(self, rest: str, query: dict[str, list[str]]) -> None:
            m = re.fullmatch(r"(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?", rest)
            if m is None:
                return self._error(404)
            kind = "model" if m[1] == "models" else "dataset"
            repo = self._repo(kind, m[2])
            revision = unquote(m[4] or "main")
            if not self._check(repo, revision):
                return None
            assert repo is not None
            if m[3] != "tree":
                siblings = [{"rfilename": p, "size": len(d)} for p, d in sorted(repo.files.items())]
                return self._json({"id": repo.repo_id, "sha": repo.commit, "private": repo.token is not None,
                                   "siblings": siblings})
            folder = unquote(m[5] or "").strip("/")
            entries = self._tree(repo, folder, query.get("recursive", ["False"])[0].lower() == "true")
            if entries is None:
                return self._error(404, "EntryNotFound")
            cursor = int(query.get("cursor", ["0"])[0])
            page = entries[cursor:cursor + server.tree_page_size]
            headers = {}
            if cursor + server.tree_page_size < len(entries):
                nxt = (f"{server.url}/api/{m[1]}/{repo.repo_id}/tree/{quote(revision, safe='')}"
                       + (f"/{quote(folder, safe='')}" if folder else "")
                       + f"?recursive={query.get('recursive', ['False'])[0]}&cursor={cursor + len(page)}")
                headers["Link"] = f'<{nxt}>; rel="next"'
            return self._json(page, headers)

        def _tree(self, repo: Repo, folder: str, recursive: bool) -> list[dict] | None:
            prefix = folder + "/" if folder else ""
            files, dirs = [], set()
            for p, data in sorted(repo.files.items()):
                if not p.startswith(prefix):
                    continue
                rest = p[len(prefix):]
                if "/" in rest and not recursive:
                    dirs.add(prefix + rest.split("/", 1)[0])
                    continue
                entry = {"type": "file", "path": p, "size": len(data),
                         "oid": hashlib.sha1(data).hexdigest()}
                if len(data) >= LFS_MIN_BYTES:
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                files.append(entry)
            if folder and not files and not dirs:
                return None
            return [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()}
                    for d in sorted(dirs)] + files

        def _resolve(self, rest: str, fault: int | str | None) -> None:
            kind = "model"
            if rest.startswith("datasets/"):
                kind, rest = "dataset", rest[len("datasets/"):]
            m = re.fullmatch(r"([^/]+/[^/]+)/resolve/([^/]+)/(.+)", rest)
            if m is None:
                return self._error(404)
            repo = self._repo(kind, m[1])
            if not self._check(repo, unquote(m[2])):
                return None
            assert repo is not None
            name = unquote(m[3])
            data = repo.files.get(name)
            if data is None:
                return self._error(404, "EntryNotFound", {"X-Repo-Commit": repo.commit})
            sha256 = hashlib.sha256(data).hexdigest()
            headers = {"X-Repo-Commit": repo.commit}
            if len(data) >= LFS_MIN_BYTES:
                location = f"http://localhost:{server.port}/cdn/{sha256}"
                return self._send(302, b"", {**headers, "Location": location, "X-Linked-Etag": f'"{sha256}"',
                                             "X-Linked-Size": str(len(data)), "ETag": f'"{sha256}"'})
            return self._data(data, {**headers, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}, fault)

    return Handler


def folder_files(folder: Path, under: str = "") -> dict[str, bytes]:
    """Files of ``folder`` as repo paths (``under/name``) -> bytes, for :meth:`LoopbackServer.add_repo`."""
    prefix = under.strip("/") + "/" if under.strip("/") else ""
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}
