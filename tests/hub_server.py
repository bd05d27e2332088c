"""A local stand-in for the Hugging Face Hub HTTP API, for the real `huggingface_hub` client.

Tests point the client at it through `HF_ENDPOINT` (fixture `hub_stand_in`), so pushes run
the library's own code paths (create_repo, upload_folder with or without `run_as_future`,
the Trainer's every_save pushes) without a network. Only the endpoints those paths call are
served; anything else is logged in `unknown` and answered 404, so a new call shows up in a
failing test instead of passing silently. Files are stored as plain git blobs: the stand-in
answers `uploadMode: regular` to every preupload, so neither LFS nor Xet is involved.

Standard library only: the stand-in must not depend on what it is testing.
"""

import base64
import hashlib
import json
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

DEFAULT_USER = "pricer-tester"
DEFAULT_TOKEN = "hf_testtoken_standin0123456789"
REPO_TYPES = ("models", "datasets", "spaces", "kernels")
_REPO_API = re.compile(r"^/api/(?P<kind>" + "|".join(REPO_TYPES) + r")/(?P<repo>[^/]+/[^/]+)(?:/(?P<rest>.*))?$")
_RESOLVE = re.compile(r"^/(?:(?P<prefix>datasets|spaces|kernels)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rest>.+)$")
# What the Hub's initial commit puts in every new repo (abridged); commits that delete "*" must keep it.
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(content: bytes) -> str:
    """The git blob id the Hub reports for a regular file; the client compares it to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class RecordedRequest:
    """One request as the stand-in saw it; `status` 0 means the connection was dropped unanswered."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorized: bool  # an Authorization header was sent (valid or not)
    status: int = 0


@dataclass
class Commit:
    """One commit: what it changed, so tests can check what each push carried."""

    oid: str
    message: str
    description: str
    added: dict[str, bytes]
    deleted: list[str]


@dataclass
class Repo:
    """A repo's current files (branch `main` only) and its commit history, oldest first."""

    repo_id: str
    repo_type: str  # "model", "dataset", ...
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Start as the Hub does: one "initial commit" adding `.gitattributes`."""
        initial = Commit(hashlib.sha1(self.repo_id.encode()).hexdigest(), "initial commit", "",
                         {".gitattributes": GITATTRIBUTES}, [])
        self.files.update(initial.added)
        self.commits.append(initial)

    @property
    def sha(self) -> str:
        """Head commit id."""
        return self.commits[-1].oid


class HubStandIn:
    """The stand-in's state plus its server; every attribute is safe to read from tests.

    Fault injection counts down over requests whose path contains `fault_match` ("" = all):
    the next `drop_first_n` of them get no answer (connection closed), then the next
    `fail_first_n` get `fail_status`. Set the knobs any time; they apply to the following requests.
    """

    def __init__(
        self,
        user: str = DEFAULT_USER,
        token: str = DEFAULT_TOKEN,
        orgs: tuple[str, ...] = (),
        fail_first_n: int = 0,
        fail_status: int = 500,
        drop_first_n: int = 0,
        fault_match: str = "",
    ) -> None:
        self.user = user
        self.token = token
        self.orgs = orgs
        self.fail_first_n = fail_first_n
        self.fail_status = fail_status
        self.drop_first_n = drop_first_n
        self.fault_match = fault_match
        self.repos: dict[str, Repo] = {}
        self.requests: list[RecordedRequest] = []
        self.unknown: list[RecordedRequest] = []
        self.validated_cards: list[str] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        """Base URL to put in HF_ENDPOINT (no trailing slash, as the client strips it)."""
        assert self._server is not None, "stand-in not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubStandIn":
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll interval: stop() waits for it, once per test.
        serve = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hub-stand-in", daemon=True)
        serve.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def files(self, repo_id: str) -> dict[str, bytes]:
        """The repo's current files, path -> content."""
        return self.repos[repo_id].files

    def commits(self, repo_id: str) -> list[Commit]:
        """The repo's commits, oldest first."""
        return self.repos[repo_id].commits

    def requests_to(self, fragment: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path contains `fragment` (and with that method, if given)."""
        return [r for r in self.requests if fragment in r.path and (method is None or r.method == method)]

    def take_fault(self, path: str) -> str | None:
        """'drop', 'fail' or None for this request, consuming one unit of the matching knob."""
        if self.fault_match not in path:
            return None
        with self.lock:
            if self.drop_first_n > 0:
                self.drop_first_n -= 1
                return "drop"
            if self.fail_first_n > 0:
                self.fail_first_n -= 1
                return "fail"
        return None

    def url_of(self, repo: Repo) -> str:
        """The repo's web URL, as the Hub answers it (dataset/space URLs carry a type prefix)."""
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo.repo_id}"


class HubError(Exception):
    """An HTTP error answer, with the `X-Error-Code` the client maps to its exception types."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass
class Blob:
    """A file answer (downloads), as opposed to the JSON answers of the API."""

    content: bytes
    commit: str


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the stand-in; HTTP/1.1 so the client's keep-alive pool is exercised."""

    protocol_version = "HTTP/1.1"
    hub: HubStandIn

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log on the stand-in is the record tests read."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        """Record, maybe inject a fault, route, answer; unknown routes are kept in `hub.unknown`."""
        url = urlsplit(self.path)
        # API paths keep their quoting (revisions and tree paths are quoted segments); file URLs do not.
        path = url.path if url.path.startswith("/api/") else unquote(url.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = RecordedRequest(method, path, parse_qs(url.query), "Authorization" in self.headers)
        with self.hub.lock:
            self.hub.requests.append(record)
        fault = self.hub.take_fault(path)
        if fault == "drop":
            self.close_connection = True
            return
        try:
            if fault == "fail":
                raise HubError(self.hub.fail_status, "injected fault")
            record.status, payload = _route(self.hub, method, path, record, self.headers, body)
        except HubError as err:
            record.status = err.status
            if err.code == "NoRoute":
                with self.hub.lock:
                    self.hub.unknown.append(record)
            self._send_error(err, head=method == "HEAD")
            return
        if isinstance(payload, Blob):
            self._send_blob(payload, head=method == "HEAD")
        else:
            self._send(record.status, json.dumps(payload).encode(), {"Content-Type": "application/json"},
                       head=method == "HEAD")

    def _send(self, status: int, data: bytes, headers: dict[str, str], head: bool = False) -> None:
        """Always with Content-Length: the connection stays open for the next request."""
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _send_error(self, err: "HubError", head: bool) -> None:
        """JSON `error` plus the X-Error-* headers hf_raise_for_status reads to pick its exception."""
        headers = {"Content-Type": "application/json", "X-Error-Message": err.message}
        if err.code and err.code != "NoRoute":
            headers["X-Error-Code"] = err.code
        self._send(err.status, json.dumps({"error": err.message, **err.extra}).encode(), headers, head)

    def _send_blob(self, blob: "Blob", head: bool) -> None:
        """A file download: the headers hf_hub_download needs to cache it (commit, etag, size)."""
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_oid(blob.content)}"',
            "X-Repo-Commit": blob.commit,
        }
        self._send(200, blob.content, headers, head)


def _handler_for(hub: HubStandIn) -> type[_Handler]:
    """A handler class bound to this stand-in (http.server instantiates one per request)."""
    return type("BoundHandler", (_Handler,), {"hub": hub})


def _route(
    hub: HubStandIn, method: str, path: str, record: RecordedRequest, headers: Any, body: bytes
) -> tuple[int, Any]:
    """Dispatch to the endpoint; raises HubError for every error answer."""
    user = _user(hub, headers)
    if method == "GET" and path == "/api/whoami-v2":
        return 200, _whoami(hub, _require(user))
    if method == "POST" and path == "/api/repos/create":
        return _create_repo(hub, _require(user), json.loads(body))
    if method == "POST" and path == "/api/validate-yaml":
        return _validate_yaml(hub, json.loads(body)["content"])
    if match := _REPO_API.match(path):
        repo = _visible_repo(hub, match["repo"], match["kind"][:-1], user)
        return _repo_api(hub, method, repo, match["rest"] or "", record, user, body)
    if (match := _RESOLVE.match(path)) and method in ("GET", "HEAD"):
        kind = (match["prefix"] or "models")[:-1]
        return _resolve(_visible_repo(hub, match["repo"], kind, user), match["rest"])
    raise HubError(404, f"no route for {method} {path}", "NoRoute")


def _user(hub: HubStandIn, headers: Any) -> str | None:
    """The account behind a `Bearer` token; a wrong token is an error, no token is anonymous."""
    auth = headers.get("Authorization")
    if auth is None:
        return None
    if auth != f"Bearer {hub.token}":
        raise HubError(401, "Invalid credentials in Authorization header")
    return hub.user


def _require(user: str | None) -> str:
    if user is None:
        raise HubError(401, "You must be authenticated to access this resource")
    return user


def _whoami(hub: HubStandIn, user: str) -> dict[str, Any]:
    """The fields of the Hub's whoami-v2 answer that clients read."""
    return {
        "type": "user",
        "id": hashlib.sha1(user.encode()).hexdigest()[:24],
        "name": user,
        "fullname": user,
        "orgs": [{"type": "org", "name": org} for org in hub.orgs],
        "auth": {"type": "access_token", "accessToken": {"displayName": "stand-in", "role": "write"}},
    }


def _create_repo(hub: HubStandIn, user: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Create under the user or one of its orgs; 409 (still with `url`, which exist_ok reads) if taken."""
    namespace = payload.get("organization") or user
    if namespace not in (user, *hub.orgs):
        raise HubError(403, f"You don't have the rights to create a repo under the namespace {namespace}")
    repo_id = f"{namespace}/{payload['name']}"
    repo_type = payload.get("type") or "model"
    with hub.lock:
        existing = hub.repos.get(repo_id)
        if existing is not None:
            raise HubError(409, f"You already created this {repo_type} repo", url=hub.url_of(existing))
        repo = Repo(repo_id, repo_type, private=payload.get("visibility") == "private")
        hub.repos[repo_id] = repo
    return 200, {"url": hub.url_of(repo), "name": repo_id, "id": repo.sha[:24]}


def _validate_yaml(hub: HubStandIn, content: str) -> tuple[int, dict[str, Any]]:
    """Checks only that front matter, when opened, is closed (the parse itself would need PyYAML)."""
    hub.validated_cards.append(content)
    if content.startswith("---") and "\n---" not in content[3:]:
        raise HubError(400, "Invalid metadata", errors=[{"message": "unterminated YAML front matter"}])
    warnings = [] if content.startswith("---") else [{"message": "empty or missing yaml metadata in repo card"}]
    return 200, {"errors": [], "warnings": warnings}


def _visible_repo(hub: HubStandIn, repo_id: str, repo_type: str, user: str | None) -> Repo:
    """A private repo looks missing to anyone but its owner, as on the Hub."""
    repo = hub.repos.get(repo_id)
    if repo is None or repo.repo_type != repo_type or (repo.private and repo_id.split("/")[0] not in (user, *hub.orgs)):
        raise HubError(404, "Repository not found", "RepoNotFound")
    return repo


def _repo_api(
    hub: HubStandIn, method: str, repo: Repo, rest: str, record: RecordedRequest, user: str | None, body: bytes
) -> tuple[int, Any]:
    """`/api/{type}s/{repo}/...`: info, tree, preupload, commit."""
    action, _, tail = rest.partition("/")
    revision, _, sub_path = tail.partition("/")
    if method == "GET" and action in ("", "revision"):
        _check_revision(unquote(revision) if action else "main")
        return 200, _repo_info(repo)
    if method == "GET" and action == "tree":
        _check_revision(unquote(revision))
        recursive = record.query.get("recursive", ["false"])[0].lower() == "true"
        return 200, _tree(repo, unquote(sub_path).strip("/"), recursive)
    if method == "POST" and action in ("preupload", "commit"):
        _check_revision(unquote(revision))
        _check_writer(hub, repo, _require(user))
        if action == "preupload":
            return 200, _preupload(repo, json.loads(body))
        return 200, _commit(hub, repo, body)
    raise HubError(404, f"no route for {method} {record.path}", "NoRoute")


def _check_revision(revision: str) -> None:
    """Only `main` exists: pushes to any other branch are a bug worth failing on."""
    if revision != "main":
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def _check_writer(hub: HubStandIn, repo: Repo, user: str) -> None:
    if repo.repo_id.split("/")[0] not in (user, *hub.orgs):
        raise HubError(403, f"You don't have the rights to write to {repo.repo_id}")


def _repo_info(repo: Repo) -> dict[str, Any]:
    """What model_info/repo_info parse: id, sha, privacy and the file list."""
    return {
        "id": repo.repo_id,
        "author": repo.repo_id.split("/")[0],
        "sha": repo.sha,
        "private": repo.private,
        "siblings": [{"rfilename": name} for name in sorted(repo.files)],
    }


def _tree(repo: Repo, folder: str, recursive: bool) -> list[dict[str, Any]]:
    """Entries under `folder` (the whole tree with `recursive`), one page: Hub pages hold 1000."""
    prefix = f"{folder}/" if folder else ""
    entries: dict[str, dict[str, Any]] = {}
    for name, content in sorted(repo.files.items()):
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):
            sub = prefix + "/".join(parts[:i])
            entries.setdefault(sub, {"type": "directory", "oid": git_blob_oid(sub.encode()), "size": 0, "path": sub})
        if recursive or len(parts) == 1:
            entries[name] = {"type": "file", "oid": git_blob_oid(content), "size": len(content), "path": name}
    if folder and not entries:
        raise HubError(404, f"{folder} does not exist on main", "EntryNotFound")
    return list(entries.values())


def _preupload(repo: Repo, payload: dict[str, Any]) -> dict[str, Any]:
    """Every file goes as a regular blob; `oid` of the stored file lets the client skip unchanged ones."""
    files = []
    for item in payload["files"]:
        stored = repo.files.get(item["path"])
        oid = git_blob_oid(stored) if stored is not None else None
        files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
    return {"files": files, "commitOid": repo.sha}


def _commit(hub: HubStandIn, repo: Repo, body: bytes) -> dict[str, Any]:
    """Apply an NDJSON commit: a header line, then file / deletedFile / deletedFolder lines."""
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
        raise HubError(400, "commit payload must start with a header line")
    header = lines[0]["value"]
    added: dict[str, bytes] = {}
    deleted: list[str] = []
    for line in lines[1:]:
        key, value = line["key"], line["value"]
        if key == "file" and value.get("encoding") == "base64":
            added[value["path"]] = base64.b64decode(value["content"])
        elif key in ("deletedFile", "deletedFolder"):
            deleted.append(value["path"])
        else:
            raise HubError(400, f"unsupported commit operation {key!r} (the stand-in stores regular files only)")
    with hub.lock:
        _apply(repo, added, deleted)
        oid = hashlib.sha1(f"{repo.sha}{header}{sorted(added)}{deleted}".encode()).hexdigest()
        repo.commits.append(Commit(oid, header["summary"], header.get("description", ""), added, deleted))
    return {"commitUrl": f"{hub.url_of(repo)}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}


def _apply(repo: Repo, added: dict[str, bytes], deleted: list[str]) -> None:
    for path in deleted:
        folder = path.rstrip("/") + "/"
        for name in [n for n in repo.files if n == path or n.startswith(folder)]:
            del repo.files[name]
    repo.files.update(added)


def _resolve(repo: Repo, rest: str) -> tuple[int, Blob]:
    """`/{repo}/resolve/{rev}/{file}`: raw file bytes, for tests that read back through a download."""
    revision, _, name = rest.partition("/")
    _check_revision(revision)
    if name not in repo.files:
        raise HubError(404, f"Entry not found: {name}", "EntryNotFound")
    return 200, Blob(repo.files[name], repo.sha)


@pytest.fixture
def hub_stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStandIn]:
    """A fresh stand-in per test, with the client (and transformers' shared HfApi) pointed at it.

    huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE, telemetry and the token path once, at
    import, and `huggingface_hub.whoami` is bound to a module-level HfApi built then: setting the
    env vars alone would leave those aimed at huggingface.co, so the constants are patched too.
    """
    from huggingface_hub import constants, hf_api

    hub = HubStandIn().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    download_url = f"{hub.endpoint}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", download_url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    # No token file from the machine running the tests: without HF_TOKEN there must be no token.
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path_factory.mktemp("hf_home") / "token"))
    monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)
    _reset_transformers_api(monkeypatch)
    try:
        yield hub
    finally:
        hub.stop()


def _reset_transformers_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers caches one HfApi (endpoint fixed at creation): drop it so the Trainer builds one here."""
    module = sys.modules.get("transformers.utils.hub")
    if module is not None and hasattr(module, "_hf_api"):
        monkeypatch.setattr(module, "_hf_api", None)
