"""A Hugging Face Hub on 127.0.0.1 for the tests: the file-resolve protocol and the upload routes of push.

Downloads: ``HEAD``/``GET /{org}/{repo}/resolve/{revision}/{file}`` answer with the commit
(``X-Repo-Commit``), the file's sha256 as its etag (``X-Linked-Etag``, as the Hub does for LFS files) and size.
Uploads (what ``HfApi.create_repo`` and ``upload_folder`` send): ``POST /api/repos/create``,
``POST /api/validate-yaml`` (the card's metadata),
``POST /api/models/{repo}/preupload/{revision}`` (every file goes "regular", inline in the commit) and
``POST /api/models/{repo}/commit/{revision}`` (NDJSON; files base64-encoded). ``tamper[file]`` makes
downloads of ``file`` "corrupt" (one byte flipped) or "truncated" (half the bytes, as a connection that
drops would leave them). Every request is recorded in ``requests``.
"""
import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Tuple


class LoopbackHub:
    def __init__(self):
        self.repos: Dict[str, Dict[str, bytes]] = {}
        self.commits: Dict[str, str] = {}
        self.tamper: Dict[str, str] = {}
        self.requests: List[Tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_HEAD(self):
                hub._resolve(self, body=False)

            def do_GET(self):
                hub._resolve(self, body=True)

            def do_POST(self):
                hub._api(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LoopbackHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def put(self, repo_id: str, files: Dict[str, bytes]) -> str:
        """Commit ``files`` to ``repo_id``; the new commit's sha."""
        self.repos.setdefault(repo_id, {}).update(files)
        digest = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest())
                                                for k, v in self.repos[repo_id].items())).encode()).hexdigest()
        self.commits[repo_id] = digest
        return digest

    @staticmethod
    def _send(handler, status: int, headers: Dict[str, str], body: bytes = b"", write: bool = True) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        if write and body:
            handler.wfile.write(body)

    def _json(self, handler, status: int, payload) -> None:
        self._send(handler, status, {"Content-Type": "application/json"}, json.dumps(payload).encode())

    def _resolve(self, handler, body: bool) -> None:
        self.requests.append((handler.command, handler.path))
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", handler.path.split("?")[0])
        repo = match and self.repos.get(match.group(1))
        if not repo or match.group(3) not in repo:
            code = "RepoNotFound" if not repo else "EntryNotFound"
            return self._send(handler, 404, {"X-Error-Code": code, "Content-Length": "0"})
        data = repo[match.group(3)]
        headers = {"X-Repo-Commit": self.commits[match.group(1)], "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": str(len(data)),
                   "Content-Type": "application/octet-stream"}
        tamper = self.tamper.get(match.group(3))
        if tamper == "corrupt":
            data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
        elif tamper == "truncated":
            data = data[: len(data) // 2]
        self._send(handler, 200, {**headers, "Content-Length": str(len(data))}, data, write=body)

    def _api(self, handler) -> None:
        self.requests.append((handler.command, handler.path))
        payload = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        path = handler.path.split("?")[0]
        if path == "/api/repos/create":
            request = json.loads(payload)
            repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            self.repos.setdefault(repo_id, {})
            self.commits.setdefault(repo_id, "0" * 40)
            return self._json(handler, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":  # the model card's metadata block
            return self._json(handler, 200, {"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
        if not match or match.group(1) not in self.repos:
            return self._json(handler, 404, {"error": f"no route {handler.command} {path}"})
        repo_id = match.group(1)
        if match.group(2) == "preupload":
            files = json.loads(payload)["files"]
            return self._json(handler, 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
        files = {}
        for line in payload.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        commit = self.put(repo_id, files)
        return self._json(handler, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{commit}", "commitOid": commit,
                                         "success": True})
