"""The README's commands work as written: every command it names answers ``--help``, and its serving examples
(the tritonclient snippet and the curl over HTTP) read a real image from the test server.

The snippets are taken from README.md itself at test time; only the server address and the image file are
substituted (the README uses the default ports and placeholder file names).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def _commands() -> set[tuple[str, ...]]:
    """Every `htr <sub>` and `python <script>.py` the README's bash blocks run."""
    found = set()
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if m := re.match(r"htr ([\w-]+)", line):
                found.add(("htr", m.group(1)))
            elif m := re.match(r"python3? ((?:export|bench)/\w+\.py)", line):
                found.add(("python", m.group(1)))
    return found


def test_the_readme_names_the_main_commands():
    names = _commands()
    assert {("htr", "serve"), ("htr", "train"), ("python", "export/build_engine.py")} <= names, names


@pytest.mark.parametrize("command", sorted(_commands()), ids=" ".join)
def test_every_readme_command_answers_help(command):
    argv = [str(BIN / "htr"), command[1]] if command[0] == "htr" else [sys.executable, str(ROOT / command[1])]
    proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_readme_tritonclient_snippet_reads_an_image(triton, tmp_path):
    (snippet,) = [b for b in _blocks("python") if "tritonclient.grpc as g" in b]
    jpg = ROOT / "samples" / "SAMPLE_03.jpg"
    code = snippet.replace('"127.0.0.1:8001"', repr(triton.url_grpc)).replace('"a.jpg"', repr(str(jpg)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[[b'HELENE']]" in proc.stdout and "[[b'']]" in proc.stdout  # the text, and no error


@pytest.mark.slow
def test_readme_curl_example_reads_an_image(triton, tmp_path):
    (block,) = [b for b in _blocks("bash") if "Inference-Header-Content-Length" in b]
    script = block.replace("http://127.0.0.1:8000", triton.url_http)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = {o["name"]: o["data"] for o in json.loads(proc.stdout)["outputs"]}
    assert outputs["TEXT"] == ["HELENE"] and outputs["ERROR"] == [""] and outputs["CONFIDENCE"][0] > 0.3


@pytest.mark.slow
def test_base64_in_json_gets_an_error_that_says_what_to_send(triton):
    """The obvious first try (base64 text in JSON) fails with a message naming the fix, not 'unknown format'."""
    import base64
    import urllib.request

    b64 = base64.b64encode((ROOT / "samples" / "SAMPLE_03.jpg").read_bytes()).decode()
    body = {"inputs": [{"name": "IMAGE_BYTES", "shape": [1, 1], "datatype": "BYTES", "data": [b64]}],
            "outputs": [{"name": "TEXT"}, {"name": "ERROR"}]}
    req = urllib.request.Request(f"{triton.url_http}/v2/models/htr/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        outputs = {o["name"]: o["data"] for o in json.loads(r.read())["outputs"]}
    assert outputs["TEXT"] == [""]
    assert "base64 text, not an image: send the file's raw bytes" in outputs["ERROR"][0]
