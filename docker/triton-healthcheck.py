"""Health check of the compose `triton` service, its stand-in for `htr serve --heal-stubs`, and its drain.

Docker runs it every few seconds (docker-compose.yml `healthcheck:`); exit status 0 is healthy, 1 unhealthy.

1. ``/v2/health/ready`` must answer 200: the server is up and every loaded model is ready (strict readiness).
2. Triton 2.51 does not restart a python-backend stub that died (triton-inference-server/server#7347), and
   readiness keeps answering 200 while every request to that instance fails. `htr serve` reloads such a
   model (htr.serve.watchdog). In the container the repository is read-only (a reload needs a touched file)
   and htr.serve is not installed, so the equivalent here is a restart: the check remembers the stub of
   every instance of a READY model (a state file), and when one is missing on two looks in a row while its
   model is still READY, it sends SIGTERM to tritonserver. The server drains what it can and exits, so
   does the entrypoint, and the service's restart policy starts the container again, which reloads every
   model.
3. A server that was ready and stays unready for HTR_UNREADY_RESTART seconds is restarted the same way
   (Docker by itself only marks a container unhealthy; it restarts only containers that exit).

``--drain`` is the first half of `htr serve`'s stop (TritonServer.drain_ensembles), which the entrypoint
runs on SIGTERM before it forwards the signal, and the Helm chart's preStop hook after the endpoint delay: unload every ready ensemble and wait (up to
HTR_DRAIN_TIMEOUT s) until they are gone, so the requests inside them finish while their steps are still
loaded; tritonserver's own drain stops every model's scheduler at once (Triton 2.51, server#6287).

Standard library only (the image has python3 and the runtime set, not htr.serve). Settings (environment):
HTR_HTTP_PORT (8000), HTR_ADMIN_KEY_FILE (/run/secrets/htr_admin_key; without it only readiness is
checked), HTR_SERVER_PID_FILE (/tmp/tritonserver.pid, written by the entrypoint; else pid 1),
HTR_HEALTH_STATE (/tmp/htr-health.json; the entrypoint clears it at each start), HTR_UNREADY_RESTART (60),
HTR_DRAIN_TIMEOUT (20).
"""
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PORT = os.environ.get("HTR_HTTP_PORT", "8000")
KEY_FILE = Path(os.environ.get("HTR_ADMIN_KEY_FILE", "/run/secrets/htr_admin_key"))
PID_FILE = Path(os.environ.get("HTR_SERVER_PID_FILE", "/tmp/tritonserver.pid"))
STATE = Path(os.environ.get("HTR_HEALTH_STATE", "/tmp/htr-health.json"))
UNREADY_RESTART = float(os.environ.get("HTR_UNREADY_RESTART", "60"))
DRAIN_TIMEOUT = float(os.environ.get("HTR_DRAIN_TIMEOUT", "20"))
HEADER = "htr-admin-key"  # serve/server.py ADMIN_HEADER
STUB = b"triton_python_backend_stub"
URL = f"http://127.0.0.1:{PORT}"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def admin_key() -> str:
    """The key, whitespace dropped (as the entrypoint reads it); OSError when there is no key file."""
    return "".join(KEY_FILE.read_text().split())


def server_pid() -> int:
    try:
        return int(PID_FILE.read_text())
    except (OSError, ValueError):
        return 1  # tritonserver exec'd as the container's first process


def ready() -> bool:
    try:
        with OPENER.open(f"{URL}/v2/health/ready", timeout=3) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def admin(path: str, key: str, timeout: float = 5):
    req = urllib.request.Request(f"{URL}{path}", data=b"{}", method="POST", headers={HEADER: key})
    with OPENER.open(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else None


def model_states(key: str) -> dict:
    """model -> READY if some version is ready, else its state (the repository index, admin key)."""
    index = admin("/v2/repository/index", key)
    states = {}
    for entry in index:
        if states.get(entry["name"]) != "READY":
            states[entry["name"]] = entry.get("state", "")
    return states


def drain(key: str) -> int:
    """Unload every ready ensemble and wait until they are gone (or HTR_DRAIN_TIMEOUT passed)."""
    ensembles = []
    for name, state in model_states(key).items():
        if state != "READY":
            continue
        with OPENER.open(f"{URL}/v2/models/{name}/config", timeout=5) as r:
            if json.load(r).get("platform") == "ensemble":
                ensembles.append(name)
    for name in ensembles:
        admin(f"/v2/repository/models/{name}/unload", key, timeout=DRAIN_TIMEOUT)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        states = model_states(key)
        if all(states.get(name) not in ("READY", "UNLOADING") for name in ensembles):
            break
        time.sleep(0.05)
    print(f"drained ensembles: {', '.join(ensembles) or 'none'}", flush=True)
    return 0


def stubs(pid: int) -> dict:
    """instance -> model of the server's live stubs (argv: model.py shm... server-pid backend-dir ipc instance),
    as htr.serve.watchdog.stub_processes reads them."""
    live = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) < 9 or not argv[0].endswith(STUB) or argv[5] != str(pid).encode():
            continue
        model, instance = Path(os.fsdecode(argv[1])).parent.parent.name, os.fsdecode(argv[8])
        if instance != model:  # not the short-lived stub that auto-completes a config while loading
            live[instance] = model
    return live


def restart(pid: int, reason: str) -> int:
    print(f"restarting tritonserver (SIGTERM to pid {pid}): {reason}", flush=True)
    STATE.unlink(missing_ok=True)
    os.kill(pid, signal.SIGTERM)
    return 1


def main() -> int:
    pid = server_pid()
    try:
        state = json.loads(STATE.read_text())
    except (OSError, ValueError):
        state = {}
    known, missing = state.get("known", {}), state.get("missing", [])
    now = time.time()
    if not ready():
        since = state.get("unready_since") or now
        if state.get("was_ready") and now - since >= UNREADY_RESTART:
            return restart(pid, f"not ready for {now - since:.0f} s")
        STATE.write_text(json.dumps({**state, "unready_since": since}))
        print("not ready")
        return 1
    try:
        key = admin_key()
    except OSError:
        key = None  # no admin key: readiness is all that can be checked
    dead = []
    if key:
        try:
            states = model_states(key)
        except (urllib.error.URLError, OSError, ValueError) as e:
            print(f"repository index: {e}")
            return 1
        live = stubs(pid)
        known.update(live)
        for instance, model in list(known.items()):
            if instance in live:
                continue
            if states.get(model) != "READY":
                known.pop(instance)  # unloaded on purpose, or gone with a new config
            elif instance in missing:
                dead.append(f"{instance} ({model})")
        missing = [i for i in known if i not in live]
    if dead:
        return restart(pid, "python-backend stub died: " + ", ".join(dead))
    STATE.write_text(json.dumps({"was_ready": True, "unready_since": None, "known": known, "missing": missing}))
    print("ready" + (f"; stub missing on this look: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--drain"]:
        try:
            sys.exit(drain(admin_key()))
        except (urllib.error.URLError, OSError, ValueError) as e:  # SIGTERM follows and does what it can
            sys.exit(f"drain: {e}")
    sys.exit(main())
