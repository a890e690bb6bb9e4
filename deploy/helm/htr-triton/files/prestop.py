"""preStop hook of the triton container: the graceful drain `htr serve` does (TritonServer.drain_ensembles).

1. Sleep HTR_ENDPOINT_DELAY seconds: the pod is being removed from the Service endpoints; requests that
   kube-proxy still routes here meanwhile are served normally.
2. In explicit model control, unload every ready ensemble and wait (up to HTR_DRAIN_TIMEOUT seconds) until
   they are gone, so the requests inside them finish while their steps are still loaded: tritonserver's own
   SIGTERM drain stops every model's scheduler at once and an ensemble request in flight would fail at its
   next step (Triton 2.51, server#6287).
3. Return: the kubelet sends SIGTERM, and tritonserver drains the rest for --exit-timeout-secs.

Standard library only (the image has python3 but not htr.serve). Any failure ends the hook early: SIGTERM
then does what can still be done.
"""
import json
import os
import sys
import time
import urllib.request

PORT = os.environ["HTR_HTTP_PORT"]
HEADER = os.environ["HTR_ADMIN_HEADER"]
KEY = os.environ["HTR_ADMIN_KEY"]
DELAY = float(os.environ.get("HTR_ENDPOINT_DELAY", "5"))
TIMEOUT = float(os.environ.get("HTR_DRAIN_TIMEOUT", "20"))
URL = f"http://127.0.0.1:{PORT}"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(path, admin=False):
    req = urllib.request.Request(URL + path, data=b"{}" if admin else None, method="POST" if admin else "GET",
                                 headers={HEADER: KEY} if admin else {})
    with OPENER.open(req, timeout=5) as r:
        body = r.read()
    return json.loads(body) if body else None


def main():
    time.sleep(DELAY)
    index = call("/v2/repository/index", admin=True)  # refused unless explicit model control
    ready = sorted({m["name"] for m in index if m.get("state") == "READY"})
    ensembles = [m for m in ready if call(f"/v2/models/{m}/config").get("platform") == "ensemble"]
    for name in ensembles:
        call(f"/v2/repository/models/{name}/unload", admin=True)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        states = {m["name"]: m.get("state") for m in call("/v2/repository/index", admin=True)}
        if all(states.get(name) not in ("READY", "UNLOADING") for name in ensembles):
            break
        time.sleep(0.1)
    print(f"preStop: drained ensembles {ensembles}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the hook must never block the shutdown
        print(f"preStop: drain skipped: {e}", file=sys.stderr, flush=True)
