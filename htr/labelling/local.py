"""A throwaway Label Studio on a free loopback port, with its own data folder and a user made without prompts.

    with LocalLabelStudio(tmp_path / "ls") as ls:          # ~7 s from a migrated template, ~60 s without
        studio = Studio(ls.url, ls.token)

Label Studio runs from its own virtual environment (``make labelstudio`` installs ``.venv-labelstudio``; its
pins clash with the project's, see requirements-labelstudio.txt). A fresh data folder spends about a minute on
database migrations, so ``make labelstudio`` migrates one database once (``template/label_studio.sqlite3`` in
that venv) and each start copies it. The user is created by ``label-studio start --username --password
--user-token`` with legacy tokens enabled for its organisation (``--enable-legacy-api-token``): the token is
then known in advance, and works as ``Authorization: Token ...`` for the SDK and plain HTTP alike.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from htr.paths import ROOT

VENV = ROOT / ".venv-labelstudio"
TEMPLATE_DB = "template/label_studio.sqlite3"  # inside the venv: the migrated database `make labelstudio` writes
DB = "label_studio.sqlite3"


class LocalLabelStudio:
    """``label-studio start`` on 127.0.0.1, a free port, data in ``data_dir``; ``stop()`` ends it (and its group)."""

    def __init__(self, data_dir: Path, venv: Path = VENV, port: int | None = None,
                 email: str = "reviewer@example.com", password: str | None = None, token: str | None = None):
        self.data_dir, self.venv = Path(data_dir), Path(venv)
        self.port = port
        self.email = email
        self.password = password or secrets.token_urlsafe(12)
        self.token = token or secrets.token_hex(20)
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir / "label-studio.log"
        self.startup_s: float | None = None
        self.from_template = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "label-studio"

    def start(self, timeout_s: float = 180.0) -> "LocalLabelStudio":
        from htr.serve.server import free_port

        if not self.executable.is_file():
            raise FileNotFoundError(f"{self.executable} not found: `make labelstudio` installs Label Studio in "
                                    f"its own venv ({self.venv.name})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        template = self.venv / TEMPLATE_DB
        if template.is_file() and not (self.data_dir / DB).exists():
            shutil.copyfile(template, self.data_dir / DB)
            self.from_template = True
        self.port = self.port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
        env.update(LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir), LATEST_VERSION_CHECK="false",
                   COLLECT_ANALYTICS="false", LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
                   VIRTUAL_ENV=str(self.venv), PATH=f"{self.venv / 'bin'}:{env.get('PATH', '')}")
        cmd = [str(self.executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
               "--username", self.email, f"--password={self.password}", "--user-token", self.token,
               "--enable-legacy-api-token", "--log-level", "WARNING"]  # --password=: a password may start with -
        t0 = time.monotonic()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(t0 + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Until the token is accepted: health alone answers before the user exists."""
        req = urllib.request.Request(f"{self.url}/api/current-user/whoami",
                                     headers={"Authorization": f"Token {self.token}"})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with status {self.proc.returncode} before it was ready: "
                                   f"{self._log_tail()}")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"label-studio was not ready on {self.url} in time: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def api(self, method: str, path: str, body=None, timeout_s: float = 30.0) -> tuple[int, object]:
        """One call to Label Studio's REST API as this user (its token): (HTTP status, the decoded JSON answer)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Token {self.token}", "Content-Type": "application/json"}
        req = urllib.request.Request(f"{self.url}{path}", method=method, data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read() or b"null")

    def annotate(self, project_id: int, task: dict, text: str | None = None, cancelled: bool = False) -> dict:
        """What the labelling page sends on Submit (the text typed over the model's read) or Skip (``cancelled``):
        ``POST /api/tasks/{id}/annotations``. ``task`` is an entry of the project's export; returns the annotation."""
        from .studio import IMAGE, TEXT

        pred = (task.get("predictions") or [None])[0]  # the export lists prediction ids
        result = [] if text is None else [{"id": "t0", "from_name": TEXT, "to_name": IMAGE, "type": "textarea",
                                           "origin": "prediction-changed" if pred else "manual",
                                           "value": {"text": [text]}}]
        body = {"result": result, "was_cancelled": cancelled, "ground_truth": False, "lead_time": 4.2,
                "started_at": "2026-11-30T12:00:00.000Z", "draft_id": 0, "project": str(project_id),
                "parent_prediction": pred, "parent_annotation": None}
        status, answer = self.api("POST", f"/api/tasks/{task['id']}/annotations/?project={project_id}", body)
        if status != 201:
            raise RuntimeError(f"Label Studio refused the annotation of task {task['id']} ({status}): {answer}")
        return answer

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and anything it started
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> "LocalLabelStudio":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
