"""Label Studio through ``label-studio-sdk``: the review project, its tasks with the model's reads as
predictions, and the export of what people finished.

    studio = Studio("http://localhost:8080", token)            # checks the URL and the token at once
    result = push(studio, Path("review/"), project="htr review")

**Images travel inside the tasks** as base64 ``data:`` URLs. The name crops are small (2-5 KB), a
``data:`` URL needs no storage set up on the Label Studio side (an upload lives in Label Studio's media folder
and is served only to a logged-in session; a local-files storage needs ``LOCAL_FILES_SERVING_ENABLED`` and a
document root), and the export then carries each image with its annotation, so ``htr label pull`` needs
neither the review folder nor a second download per image.

**Re-pushing is idempotent**: each task carries ``htr_key``, the SHA-256 of its image bytes; images whose key
is already in the project are not imported again (a push cut short by an error is finished by pushing again).

**Tokens**: the SDK takes either a legacy token (``Authorization: Token ...``, the one ``label-studio start
--user-token`` sets) or a personal access token (a JWT refresh token, exchanged for access tokens); Label
Studio 1.17+ accepts legacy tokens only where the organisation enabled them (``--enable-legacy-api-token``).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mimetypes
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import LabellingError, LabelStudioAuthError, LabelStudioUnreachable
from .review import IMAGES, Read, read_review

URL_ENV, TOKEN_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"  # the SDK's own variable names
DEFAULT_URL = "http://localhost:8080"  # where `label-studio start` listens by default
DEFAULT_PROJECT = "htr review"
DEFAULT_MODEL_VERSION = "htr"  # when the review folder does not say which model read it
IMAGE, TEXT = "image", "transcription"  # the labelling config's object tag and text control
KEY = "htr_key"  # task data: SHA-256 of the image bytes
IMPORT_CHUNK = 100  # tasks per import request

# OCR of a whole crop: the image, and one editable line of text that the model's read pre-fills.
LABEL_CONFIG = f"""<View>
  <Header value="Type the name as it is written; press Skip when it cannot be read"/>
  <Image name="{IMAGE}" value="${IMAGE}"/>
  <TextArea name="{TEXT}" toName="{IMAGE}" editable="true" maxSubmissions="1" rows="1"
            placeholder="the name as written"/>
</View>"""


def image_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_url(data: bytes, filename: str) -> str:
    mime = mimetypes.guess_type(filename)[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def decode_data_url(url) -> bytes | None:
    """The bytes of a base64 ``data:`` URL; None for anything else (a URL to a file, a malformed value)."""
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        return None
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        return None


def task_for(read: Read, data: bytes, model_version: str) -> dict:
    """One Label Studio task: the image, its names, and the model's read as a prediction (score = confidence)."""
    result = []  # nothing read: an empty prediction, the text line starts empty
    if read.text:
        result = [{"from_name": TEXT, "to_name": IMAGE, "type": "textarea", "value": {"text": [read.text]}}]
    return {"data": {IMAGE: data_url(data, read.filename), "filename": read.filename, "source": read.source,
                     KEY: image_key(data)},
            "predictions": [{"model_version": model_version, "score": round(float(read.confidence), 6),
                             "result": result}]}


def _detail(body) -> str:
    if isinstance(body, dict):
        body = body.get("detail") or body.get("validation_errors") or body
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return " ".join(text.split())[:300]


class Studio:
    """A connection to one Label Studio: the URL and token are checked when it is made (``whoami``).

    ``url``/``token`` default to ``$LABEL_STUDIO_URL`` (else :data:`DEFAULT_URL`) and ``$LABEL_STUDIO_API_KEY``.
    Every failure is a :class:`~htr.labelling.errors.LabellingError` with a one-line message: unreachable,
    token refused (401/403), or a request refused with Label Studio's own reason."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 30.0):
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            raise LabellingError(f"no Label Studio API token: pass --token or set ${TOKEN_ENV} (Label Studio: "
                                 "Account & Settings)")
        with warnings.catch_warnings():  # the SDK 1.0's pydantic-v1-style models warn on import
            warnings.simplefilter("ignore", DeprecationWarning)
            from label_studio_sdk.client import LabelStudio

        self._ls = self._call("accept the token", lambda: LabelStudio(base_url=self.url, api_key=token,
                                                                      timeout=timeout_s))
        self.user = self._call("say who the token belongs to", self._ls.users.whoami)

    def _call(self, what: str, fn):
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            with warnings.catch_warnings():  # the SDK 1.0 calls pydantic-v1 methods (parse_obj) when it runs
                warnings.filterwarnings("ignore", category=DeprecationWarning, module="label_studio_sdk")
                return fn()
        except httpx.TransportError as e:  # refused, reset, DNS, timeouts
            raise LabelStudioUnreachable(self.url, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
        except ApiError as e:
            if e.status_code in (401, 403):
                raise LabelStudioAuthError(self.url, e.status_code, _detail(e.body)) from None
            raise LabellingError(f"Label Studio at {self.url} refused to {what} "
                                 f"({e.status_code}: {_detail(e.body)})") from None
        except ValueError as e:  # an answer that is not Label Studio's JSON (another server on that port)
            raise LabellingError(f"{self.url} did not answer like Label Studio when asked to {what} "
                                 f"({type(e).__name__}): is the URL right?") from None

    def project_url(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}/data"

    def find_project(self, title: str):
        """The project titled exactly ``title``, or None; several with that title is an error."""
        found = [p for p in self._call("list projects", lambda: list(self._ls.projects.list(title=title)))
                 if p.title == title]
        if len(found) > 1:
            raise LabellingError(f"{len(found)} projects on {self.url} are titled {title!r} "
                                 f"(ids {', '.join(str(p.id) for p in found)}): rename all but one in Label Studio")
        return found[0] if found else None

    def ensure_project(self, title: str, model_version: str):
        """``(project, created)``: the project titled ``title`` with this module's labelling config, made when
        missing. Its ``model_version`` is set to the one pushed, so Label Studio pre-fills from those predictions."""
        project = self.find_project(title)
        if project is None:
            self._call("create a project", lambda: self._ls.projects.create(
                title=title, label_config=LABEL_CONFIG, show_collab_predictions=True, model_version=model_version,
                description="Doubtful reads of the htr model (htr label push); correct the text, or Skip"))
            return self.find_project(title), True
        parsed = getattr(project, "parsed_label_config", None) or {}
        if parsed.get(TEXT, {}).get("type") != "TextArea" or IMAGE not in parsed.get(TEXT, {}).get("to_name", []):
            raise LabellingError(f"project {title!r} on {self.url} has another labelling config (no TextArea "
                                 f"{TEXT!r} on Image {IMAGE!r}): push to another --project")
        if project.model_version != model_version:
            self._call("set the project's model version",
                       lambda: self._ls.projects.update(project.id, model_version=model_version))
        return project, False

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of the project with its annotations (Label Studio's JSON export, all tasks)."""
        raw = self._call("export the project's tasks", lambda: b"".join(self._ls.projects.exports.download_sync(
            project_id, export_type="JSON", download_all_tasks=True)))
        try:
            return json.loads(raw)
        except ValueError:
            raise LabellingError(f"Label Studio at {self.url} sent an export that is not JSON") from None

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        ids = []
        for i in range(0, len(tasks), IMPORT_CHUNK):
            chunk = tasks[i:i + IMPORT_CHUNK]
            r = self._call("import tasks", lambda: self._ls.projects.import_tasks(project_id, request=chunk,
                                                                                  return_task_ids=True))
            ids += list(r.task_ids or [])
        return ids


@dataclass(frozen=True)
class PushResult:
    project_id: int
    project_url: str
    created: bool
    added: int
    already: int
    model_version: str


def push(studio: Studio, folder: Path, project: str = DEFAULT_PROJECT, model_version: str | None = None) -> PushResult:
    """Send a review folder to the project titled ``project`` (made when missing): one task per read, the read as
    a prediction. Reads whose image is already in the project are left as they are."""
    folder = Path(folder)
    reads, meta = read_review(folder)
    if not reads:
        raise LabellingError(f"{folder} holds no reads (reads.csv has no rows): nothing to push")
    version = model_version or meta.get("model_version") or DEFAULT_MODEL_VERSION
    proj, created = studio.ensure_project(project, version)
    have = set() if created else {t.get("data", {}).get(KEY) for t in studio.tasks(proj.id)}
    new, already = [], 0
    for read in reads:
        data = (folder / IMAGES / read.filename).read_bytes()
        if image_key(data) in have:
            already += 1
            continue
        have.add(image_key(data))
        new.append(task_for(read, data, version))
    studio.import_tasks(proj.id, new)
    return PushResult(proj.id, studio.project_url(proj.id), created, len(new), already, version)
