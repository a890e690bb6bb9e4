"""Monitoring: a real Prometheus (Debian package) scraping a real Triton while Locust loads it.

- every PromQL expression of every Grafana panel and every recording/alert rule is evaluated through
  Prometheus' HTTP API: each parses and returns data (GPU panels exempt: this machine has no GPU, so
  Triton exports no ``nv_gpu_*`` series; their expressions must still parse);
- Locust's request count equals Triton's ``nv_inference_request_success`` increase within 1 %;
- the drift alert fires after a burst of images unlike the training data;
- the rules, the Prometheus config, docker-compose.yml and the Grafana provisioning are consistent;
- compose's ``triton`` serves as ``htr serve`` does: the same tritonserver flags, the admin key from the
  secret (its entrypoint runs here with the real tritonserver), and its health check restarts a server
  whose python-backend stub died;
- ``htr monitor`` runs Prometheus against a running ``htr serve`` with the project's rules.

Prometheus runs ``monitoring/prometheus.yml`` through ``htr.serve.monitor.write_config`` (what ``htr monitor``
runs): only the target files replaced and the intervals set to 1 s; the rule file is the shipped one (the
drift test shortens its alerts' ``for:`` to 0 s so it does not have to wait ten minutes).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from htr.serve import monitor

ROOT = Path(__file__).resolve().parents[1]
MON = ROOT / "monitoring"
COMPOSE = ROOT / "docker-compose.yml"
ENTRYPOINT = ROOT / "docker" / "triton-entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "triton-healthcheck.py"
RULES = MON / "rules" / "htr.rules.yml"
DASHBOARDS = MON / "grafana" / "dashboards"
GPU_ONLY = "GPU"  # panels whose title starts with this read nv_gpu_* metrics (no GPU here)
RATE_INTERVAL = "1m"  # Grafana's $__rate_interval for a 1 s scrape interval is far smaller; 1m is safe
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

pytestmark = pytest.mark.slow


def _binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"`{name}` not found: `make install` installs the Debian prometheus package "
                    f"(apt-get install prometheus docker-compose)", pytrace=False)
    return path


def _get(url: str, timeout: float = 10.0) -> dict:
    with OPENER.open(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


class PrometheusAPI:
    """The HTTP API of a running Prometheus at ``url``: queries, waits, rules."""

    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> dict:
        """Instant query; returns the ``data`` object; fails the test with Prometheus' error if it does not parse."""
        try:
            body = _get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        except urllib.error.HTTPError as e:
            body = json.loads(e.read().decode())
        assert body.get("status") == "success", f"{expr!r}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def values(self, expr: str) -> list[float]:
        data = self.query(expr)
        if data["resultType"] == "scalar":
            return [float(data["result"][1])]
        return [float(r["value"][1]) for r in data["result"]]

    def wait_for(self, expr: str, predicate, timeout: float = 60.0) -> list[float]:
        deadline = time.monotonic() + timeout
        while True:
            vals = self.values(expr)
            if vals and predicate(vals):
                return vals
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr!r} did not reach the expected value in {timeout:.0f} s: {vals}")
            time.sleep(1.0)

    def rules(self) -> list[dict]:
        return [r for g in _get(f"{self.url}/api/v1/rules")["data"]["groups"] for r in g["rules"]]


class Prometheus(monitor.Prometheus, PrometheusAPI):
    """A Prometheus server on a free loopback port, configured from monitoring/prometheus.yml as
    ``htr monitor`` configures it (``targets``: job -> ``host:port``), scraping every second."""

    def __init__(self, workdir: Path, targets: dict[str, str], for_override: str | None = None):
        assert yaml.safe_load((MON / "prometheus.yml").read_text())["rule_files"] == [f"rules/{RULES.name}"]
        rules = yaml.safe_load(RULES.read_text())
        if for_override is not None:
            for group in rules["groups"]:
                for rule in group["rules"]:
                    if "alert" in rule:
                        rule["for"] = for_override
        (workdir / "rules").mkdir(parents=True, exist_ok=True)
        (workdir / "rules" / RULES.name).write_text(yaml.safe_dump(rules))
        config = monitor.write_config(workdir, {job: [target] for job, target in targets.items()}, interval="1s",
                                      rule_files=[workdir / "rules" / RULES.name])
        super().__init__(config, workdir, port=0, binary=_binary("prometheus"))


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every target of every provisioned dashboard."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


def _substitute(expr: str) -> str:
    """Grafana variables -> values Prometheus accepts (``$model``: every model)."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$model", ".*")


def _rule_file() -> dict:
    return yaml.safe_load(RULES.read_text())


# --- static consistency (fast) ----------------------------------------------------------------------

def test_prometheus_config_and_rules_pass_promtool():
    promtool = _binary("promtool")
    out = subprocess.run([promtool, "check", "config", str(MON / "prometheus.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rules = sum(len(g["rules"]) for g in _rule_file()["groups"])
    assert f"SUCCESS: {rules} rules found" in out.stdout, out.stdout  # promtool read the rule file it names


def test_rule_bucket_bounds_are_published_buckets():
    """Every ``le`` a rule reads is a bucket edge the pipeline publishes (else the drift signal is empty)."""
    from htr.runtime import prometheus as tm

    buckets = {"htr_input_width_pixels": tm.WIDTH_BUCKETS, "htr_input_height_pixels": tm.HEIGHT_BUCKETS,
               "htr_input_ink_ratio": tm.INK_BUCKETS, "htr_prediction_length_chars": tm.LENGTH_BUCKETS,
               "htr_prediction_confidence": tm.CONFIDENCE_BUCKETS}
    found = re.findall(r'(htr_[a-z_]+)_bucket\{le="([0-9.]+)"\}', RULES.read_text())
    assert len(found) >= 7
    for metric, le in found:
        assert float(le) in [float(b) for b in buckets[metric]], f"{metric} has no bucket le={le}"
    for name, (low, high) in tm.REFERENCE_RANGES.items():
        assert f'le="{low}"' in RULES.read_text() and f'le="{high}"' in RULES.read_text(), name


def test_serving_dashboard_matches_its_generator():
    out = subprocess.run([sys.executable, str(MON / "build_dashboards.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_compose_file_validates_and_provisioning_points_at_what_exists(tmp_path):
    compose = _binary("docker-compose")
    env = {"HTR_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    spec = yaml.safe_load(out.stdout)
    services = spec["services"]
    assert {"triton", "prometheus", "grafana", "build-engine"} <= set(services)

    def mounts(service):  # container path -> host path
        return {v.split(":")[1]: Path(v.split(":")[0]) for v in services[service]["volumes"] if isinstance(v, str)} \
            | {v["target"]: Path(v["source"]) for v in services[service]["volumes"] if isinstance(v, dict)}

    prom = mounts("prometheus")
    assert prom["/etc/prometheus/prometheus.yml"].resolve() == (MON / "prometheus.yml").resolve()
    assert prom["/etc/prometheus/rules"].resolve() == (MON / "rules").resolve()
    config = yaml.safe_load((MON / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:  # relative to /etc/prometheus in the container
        assert (prom["/etc/prometheus/rules"] / Path(rule_file).relative_to("rules")).is_file(), rule_file
    # one prometheus.yml for compose and a host: its target files are targets/compose/ in the container
    target_files = {job["job_name"]: job["file_sd_configs"][0]["files"][0] for job in config["scrape_configs"]}
    in_compose = {job: prom["/etc/prometheus/targets"] / Path(f).relative_to("targets")
                  for job, f in target_files.items()}
    host, port = yaml.safe_load(in_compose["triton"].read_text())[0]["targets"][0].split(":")
    assert host in services and f"--metrics-port={port}" in services["triton"]["command"]
    train_host = yaml.safe_load(in_compose["htr-train"].read_text())[0]["targets"][0].split(":")[0]
    assert f"{train_host}:host-gateway" in services["prometheus"]["extra_hosts"]  # resolves on Linux too
    # ... and on a host, what `htr serve` and `htr train` bind by default
    from htr.serve import ServerOptions

    on_host = {job: yaml.safe_load((MON / f).read_text())[0]["targets"] for job, f in target_files.items()}
    assert on_host == {"triton": [f"127.0.0.1:{ServerOptions().metrics_port}"], "htr-train": ["127.0.0.1:9109"]}

    graf = mounts("grafana")
    env = services["grafana"]["environment"]
    prov_dir = graf["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((prov_dir / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources}
    # provisioning reads its Prometheus and dashboards folder from the environment (another Grafana sets its own)
    assert datasources[0]["url"] == "${HTR_PROMETHEUS_URL}" and env["HTR_PROMETHEUS_URL"] == "http://prometheus:9090"
    assert "prometheus" in services
    for provider in yaml.safe_load((prov_dir / "dashboards" / "htr.yml").read_text())["providers"]:
        assert provider["options"]["path"] == "${HTR_DASHBOARDS_DIR}"
        dash_dir = graf[env["HTR_DASHBOARDS_DIR"]]
        files = sorted(dash_dir.glob("*.json"))
        assert {f.name for f in files} >= {"serving.json", "training.json"}
        for f in files:
            dash = json.loads(f.read_text())
            for panel in dash["panels"]:
                if panel["type"] != "row":
                    assert panel["datasource"]["uid"] in uids, (f.name, panel["title"])


# --- live: Triton + Locust + training exporter + Prometheus --------------------------------------------

@pytest.fixture(scope="module")
def training_exporter(tmp_path_factory, kaggle_dir):
    """A short real training run whose exporter stays up (--metrics-linger) for Prometheus to scrape."""
    from htr.serve import free_port

    port = free_port()
    out = tmp_path_factory.mktemp("train")
    proc = subprocess.Popen(
        [sys.executable, "-m", "htr.cli", "train", "--out", str(out / "run"), "--real", str(kaggle_dir),
         "--synth", "32", "--epochs", "1", "--max-steps", "4", "--batch-size", "8", "--workers", "0",
         "--threads", "1", "--metrics-port", str(port), "--metrics-linger", "600", "--no-progress"],
        stdout=(out / "train.log").open("wb"), stderr=subprocess.STDOUT)
    yield f"127.0.0.1:{port}", proc, out / "train.log"
    proc.terminate()
    proc.wait(30)


def _wait_line(log: Path, text: str, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"training exited early: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in the training log after {timeout:.0f} s"
        time.sleep(1)


def test_every_panel_and_rule_returns_data_under_locust_load(triton, training_exporter, kaggle_dir, tmp_path):
    from htr.loadtest.run import locust_command, read_stats, run_locust

    train_target, train_proc, train_log = training_exporter
    metrics_target = triton.url_metrics.split("://", 1)[1].rsplit("/", 1)[0]
    with Prometheus(tmp_path / "prom", {"triton": metrics_target, "htr-train": train_target}) as prom:
        prom.wait_for('up{job="triton"}', lambda v: v == [1.0], timeout=30)
        before = prom.wait_for('sum(nv_inference_request_success{model="htr"})', lambda v: True)[0]

        images = tmp_path / "images"  # real images, plus one corrupt file so the refusal counters move
        images.mkdir()
        for f in sorted((kaggle_dir / "labelled").glob("*.jpg"))[:200]:
            (images / f.name).write_bytes(f.read_bytes())
        reports = tmp_path / "reports"
        cmd = locust_command(host=triton.url_http, grpc_url=triton.url_grpc, users=16, spawn_rate=16,
                             run_time="25s", images=images, reports=reports, batch_size=8)
        proc = run_locust(cmd, timeout_s=120)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        stats = read_stats(reports)
        sent = stats["total"]["requests"]
        assert sent > 100 and stats["total"]["failures"] == 0, stats["total"]

        time.sleep(3)  # a few more scrapes and rule evaluations
        after = prom.wait_for('sum(nv_inference_request_success{model="htr"})', lambda v: v[0] >= before + sent * 0.99,
                              timeout=20)[0]
        served = after - before
        assert abs(served - sent) <= 0.01 * sent, f"Locust sent {sent}, Triton counted {served}"

        # one bad image so htr_input_failures_total moves (refusals are per item, the request succeeds)
        from htr.client import HTRClient

        with HTRClient(triton.url_grpc) as client:
            assert client.recognize([b"not an image"])[0].error
        _wait_line(train_log, "metrics stay up", train_proc, timeout=300)
        prom.wait_for('htr_train_cer{split="val"}', lambda v: True, timeout=30)
        time.sleep(3)

        exempt, checked = [], 0
        for dash, title, expr in dashboard_targets():
            data = prom.query(_substitute(expr))  # parses, or the test fails with Prometheus' error
            if title.startswith(GPU_ONLY):
                exempt.append(title)
                continue
            assert data["result"], f"{dash} / {title}: no data for {expr!r}"
            checked += 1
        assert checked >= 25 and set(exempt) == {"GPU utilisation", "GPU memory"}, (checked, exempt)

        rules = prom.rules()
        assert len(rules) == sum(len(g["rules"]) for g in _rule_file()["groups"])
        for rule in rules:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
            if rule["type"] == "recording":
                assert prom.values(rule["name"]), f"recording rule {rule['name']} has no data"
            else:
                prom.query(rule["query"])  # the alert expression parses and evaluates
                # ... and the signal it compares (the left-hand side) has data
                signal = re.split(r"\s(?:>|<|==)\s", rule["query"].split(" and ")[0])[0]
                assert prom.values(signal), f"alert {rule['name']}: signal {signal!r} has no data"


def _wide_blank_images(n: int, rng) -> list[bytes]:
    """Images nothing like the training data: 1600-2400 px wide, blank or with a few stray lines."""
    import cv2

    out = []
    for i in range(n):
        img = np.full((40, int(rng.integers(1600, 2400)), 3), 255, np.uint8)
        if i % 2:
            cv2.line(img, (10, 20), (img.shape[1] - 10, 22), (0, 0, 0), 1)
        out.append(cv2.imencode(".png", img)[1].tobytes())
    return out


def test_drift_signal_moves_and_alert_fires(cpu_repository, kaggle_dir, tmp_path):
    from htr.client import HTRClient
    from htr.serve import ServerOptions, TritonServer

    with TritonServer(cpu_repository, ServerOptions.with_free_ports(log_file=tmp_path / "triton.log")) as server:
        target = server.url_metrics.split("://", 1)[1].rsplit("/", 1)[0]
        with Prometheus(tmp_path / "prom", {"triton": target}, for_override="0s") as prom, \
                HTRClient(server.url_grpc) as client:
            prom.wait_for('up{job="triton"}', lambda v: v == [1.0], timeout=30)  # scraped before traffic
            normal = [f.read_bytes() for f in sorted((kaggle_dir / "labelled").glob("*.jpg"))[:150]]
            for k in range(0, len(normal), 10):  # spread over a few scrapes, so rates see the increase
                assert all(not p.error for p in client.recognize(normal[k:k + 10]))
                time.sleep(0.3)
            drift = 'htr:input_out_of_range:ratio5m{signal="width"}'
            low = prom.wait_for(drift, lambda v: not np.isnan(v[0]), timeout=30)  # NaN until rates have 2 samples
            assert low[0] < 0.1, f"real images should be in range, got {low}"
            assert not prom.values('ALERTS{alertname="HTRInputDrift", alertstate="firing"}')

            burst = _wide_blank_images(300, np.random.default_rng(0))
            for k in range(0, len(burst), 10):
                client.recognize(burst[k:k + 10])
                time.sleep(0.1)
            high = prom.wait_for(drift, lambda v: v[0] > 0.5, timeout=30)  # 300 of 450 recent images are wide
            ink = prom.wait_for('htr:input_out_of_range:ratio5m{signal="ink"}', lambda v: v[0] > 0.25, timeout=30)
            prom.wait_for('ALERTS{alertname="HTRInputDrift", alertstate="firing"}', lambda v: len(v) >= 1, timeout=30)
            firing = {a["labels"].get("signal") for a in _get(f"{prom.url}/api/v1/alerts")["data"]["alerts"]
                      if a["labels"]["alertname"] == "HTRInputDrift" and a["state"] == "firing"}
            assert "width" in firing, firing
            print(f"drift share width {low[0]:.3f} -> {high[0]:.3f}, ink -> {ink[0]:.3f}; firing for {sorted(firing)}")


# --- the compose deployment serves as `htr serve` does -------------------------------------------------

def _flags(argv) -> dict[str, list[str]]:
    """tritonserver flags -> their values, whether written ``--flag=value`` or ``--flag value``."""
    out: dict[str, list[str]] = {}
    it = iter(argv)
    for token in it:
        assert token.startswith("--"), token
        flag, eq, value = token.partition("=")
        out.setdefault(flag, []).append(value if eq else next(it))
    return out


def _compose_triton_command() -> list[str]:
    return yaml.safe_load(COMPOSE.read_text())["services"]["triton"]["command"]


def test_compose_triton_runs_the_flags_of_htr_serve():
    """Compose's tritonserver flags are those of ``htr serve --address 0.0.0.0`` on a GPU host
    (``TritonServer.command()``), but for the paths inside the image; the entrypoint adds the restricted-API
    flags for the same APIs and header, and the image ships the entrypoint and the health check."""
    from htr.serve import ADMIN_HEADER, ServerOptions, TritonServer

    spec = yaml.safe_load(COMPOSE.read_text())
    command = spec["services"]["triton"]["command"]
    assert command[:2] == ["sh", "/opt/htr/bin/triton-entrypoint.sh"], command
    server = TritonServer(ROOT / "model_repository", ServerOptions(address="0.0.0.0", model_control="explicit",
                                                                   gpu=True))
    ours = _flags(server.command(backend_dir=Path("/backends"))[1:])
    theirs = _flags(command[2:])
    restricted = f"{','.join(server.restricted_apis)}:{ADMIN_HEADER}=$key"
    assert ours.pop("--http-restricted-api") == ours.pop("--grpc-restricted-protocol") == [server.admin_key.join(
        restricted.rsplit("$key", 1))]
    assert f'restricted="{restricted}"' in ENTRYPOINT.read_text()  # what the entrypoint adds, with the secret
    assert ours.pop("--model-repository") == [str(server.repository)] and ours.pop("--backend-directory")
    assert theirs.pop("--model-repository") == ["/models/repository"]
    assert theirs == ours
    assert "--metrics-config" in theirs and theirs["--model-control-mode"] == ["explicit"]

    triton = spec["services"]["triton"]
    assert triton["secrets"] == ["htr_admin_key"] and "htr_admin_key" in spec["secrets"]
    assert triton["healthcheck"]["test"] == ["CMD", "python3", f"/opt/htr/bin/{HEALTHCHECK.name}"]
    assert triton["restart"] == "unless-stopped"
    dockerfile = (ROOT / "docker" / "Dockerfile.triton").read_text()
    assert f"COPY docker/{ENTRYPOINT.name} docker/{HEALTHCHECK.name} /opt/htr/bin/" in dockerfile


def _post(url: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with OPENER.open(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


ENSEMBLE_CONFIG = """\
name: "pair"
platform: "ensemble"
max_batch_size: 8
input [ { name: "VALUES", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "DOUBLED", data_type: TYPE_FP32, dims: [ -1 ] } ]
ensemble_scheduling { step [ { model_name: "double", model_version: -1,
  input_map { key: "VALUES", value: "VALUES" }, output_map { key: "DOUBLED", value: "DOUBLED" } } ] }
"""


class ComposeTriton:
    """docker/triton-entrypoint.sh running the real tritonserver with compose's flags, only the repository,
    ports and addresses made local (loopback, free ports), the backend folder added and a 5 s exit timeout;
    the admin key in a secret file."""

    def __init__(self, workdir: Path, repository: Path):
        from htr.serve import default_tritonserver, prepare_backend_dir, stub_environment
        from htr.serve.server import free_port

        workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {"--http-port": free_port(), "--grpc-port": free_port(), "--metrics-port": free_port()}
        local = {"--model-repository": str(repository), "--http-address": "127.0.0.1", "--exit-timeout-secs": "5",
                 "--grpc-address": "127.0.0.1", "--metrics-address": "127.0.0.1"} | \
            {k: str(v) for k, v in self.ports.items()}
        argv = []
        for flag, values in _flags(_compose_triton_command()[2:]).items():
            argv += [f"{flag}={local.get(flag, value)}" for value in values]
        backends = prepare_backend_dir()
        argv.append(f"--backend-directory={backends}")
        self.key = "compose-secret-" + os.urandom(12).hex()
        secret = workdir / "admin-key"
        secret.write_text(self.key + "\n")
        self.pid_file = workdir / "tritonserver.pid"
        # what the entrypoint and the health check read, as Docker gives it to them (system python3)
        self.env = {"PATH": "/usr/bin:/bin", "HTR_HTTP_PORT": str(self.ports["--http-port"]),
                    "HTR_ADMIN_KEY_FILE": str(secret), "HTR_SERVER_PID_FILE": str(self.pid_file),
                    "HTR_HEALTH_STATE": str(workdir / "health.json"), "PYTHON": "/usr/bin/python3"}
        env = stub_environment() | self.env | {"TRITONSERVER": str(default_tritonserver())}
        self.http = f"http://127.0.0.1:{self.ports['--http-port']}"
        self.log = workdir / "triton.log"
        self.proc = subprocess.Popen(["sh", str(ENTRYPOINT), *argv], stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=backends,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while _post_ready(self.http) != 200:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready after 60 s:\n" + self.log.read_text()[-3000:]
            time.sleep(0.25)
        self.server_pid = int(self.pid_file.read_text())

    def health(self) -> subprocess.CompletedProcess:
        """The health check as Docker runs it in the image: system python3, no site-packages."""
        return subprocess.run(["/usr/bin/python3", "-I", "-S", str(HEALTHCHECK)], env=self.env,
                              capture_output=True, text=True, timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def test_compose_entrypoint_serves_with_the_secret_key_and_drains_ensembles_first(tmp_path):
    """The key comes from the secret and guards the restricted APIs (shared memory too, as off loopback),
    latency summaries are on, and SIGTERM to the entrypoint (``docker compose stop``) unloads the ensemble
    before tritonserver gets the signal, then exits with its status, 0."""
    from test_serve import _make_repository

    repository = _make_repository(tmp_path / "repository")
    (repository / "pair" / "1").mkdir(parents=True)
    (repository / "pair" / "config.pbtxt").write_text(ENSEMBLE_CONFIG)
    triton = ComposeTriton(tmp_path / "run", repository)
    try:
        for path in ("/v2/repository/index", "/v2/systemsharedmemory/status"):
            assert _post(triton.http + path) == 403, path
        assert _post(triton.http + "/v2/repository/index", {"htr-admin-key": triton.key}) == 200
        assert triton.key not in triton.log.read_text()
        with OPENER.open(f"http://127.0.0.1:{triton.ports['--metrics-port']}/metrics", timeout=5) as r:
            assert "nv_inference_request_summary_us" in r.read().decode()  # the p99 rule's input
        assert _http_double(triton.ports["--http-port"], "pair")

        triton.proc.send_signal(signal.SIGTERM)
        assert triton.proc.wait(timeout=60) == 0, triton.log.read_text()[-3000:]
        log = triton.log.read_text()
        assert "drained ensembles: pair" in log, log[-3000:]
        assert log.index("successfully unloaded 'pair'") < log.index("Signal (15) received"), log[-3000:]
    finally:
        triton.kill()


def test_compose_healthcheck_restarts_a_server_whose_stub_died(tmp_path):
    """The health check passes while the stubs live; once a stub is gone on two looks in a row (Triton
    still reports ready) it sends SIGTERM, the server and the entrypoint exit, and the restart policy
    would start a fresh container."""
    from test_serve import _make_repository

    from htr.serve import stub_processes

    triton = ComposeTriton(tmp_path / "run", _make_repository(tmp_path / "repository"))
    try:
        first = triton.health()
        assert first.returncode == 0 and first.stdout.strip() == "ready", first.stdout + first.stderr
        stubs = stub_processes(triton.server_pid)
        assert [s.model for s in stubs] == ["double"], stubs
        os.kill(stubs[0].pid, signal.SIGKILL)
        time.sleep(0.5)
        assert _post_ready(triton.http) == 200  # Triton still says ready: hence this check
        once = triton.health()
        assert once.returncode == 0 and "stub missing on this look" in once.stdout, once.stdout + once.stderr
        twice = triton.health()
        assert twice.returncode == 1 and "restarting tritonserver" in twice.stdout, twice.stdout + twice.stderr
        assert "python-backend stub died: double_0_0 (double)" in twice.stdout
        triton.proc.wait(timeout=60)  # the server drains and exits, and so does the entrypoint
        assert "Signal (15) received" in triton.log.read_text()
    finally:
        triton.kill()


def _post_ready(http: str) -> int:
    try:
        with OPENER.open(f"{http}/v2/health/ready", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


# --- htr monitor: Prometheus without Docker, against a running htr serve --------------------------------

def _wait_output(path: Path, text: str, proc, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, f"exited early:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f} s:\n{path.read_text()[-3000:]}"
        time.sleep(0.2)
    return path.read_text()


def test_htr_monitor_scrapes_htr_serve_with_the_rules(tmp_path):
    """``htr serve`` and ``htr monitor`` as a user runs them (free loopback ports): Prometheus comes up on the
    metrics URL ``htr serve`` printed, loads every rule, scrapes the server, and the p99 recording rule has
    data once a request went through (summary latencies are on); Ctrl-C stops it cleanly."""
    from test_serve import MODEL, _make_repository, _ports

    repository = _make_repository(tmp_path / "repository")
    ports = _ports()
    htr = [sys.executable, "-m", "htr.cli"]
    serve_out, monitor_out = tmp_path / "serve.out", tmp_path / "monitor.out"
    serve = subprocess.Popen(
        [*htr, "serve", "--repository", str(repository), "--http-port", str(ports["http_port"]),
         "--grpc-port", str(ports["grpc_port"]), "--metrics-port", str(ports["metrics_port"]),
         "--log-file", str(tmp_path / "tritonserver.log")],
        stdout=serve_out.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    mon = None
    try:
        text = _wait_output(serve_out, "htr serve: ready in", serve, 60)
        metrics_url = re.search(r"^htr serve: metrics +(\S+)", text, re.M).group(1)
        mon = subprocess.Popen([*htr, "monitor", "--metrics-url", metrics_url, "--port", "0",
                                "--data-dir", str(tmp_path / "monitor")],
                               stdout=monitor_out.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        text = _wait_output(monitor_out, "Ctrl-C stops it", mon, 90)
        url = re.search(r"^htr monitor: Prometheus (http://127\.0\.0\.1:\d+)", text, re.M).group(1)
        assert f"scraping triton    {metrics_url} (answers)" in text, text

        prom = PrometheusAPI(url)
        rules = prom.rules()
        assert len(rules) == sum(len(g["rules"]) for g in _rule_file()["groups"])
        prom.wait_for('up{job="triton"}', lambda v: v == [1.0], timeout=30)
        assert _http_double(ports["http_port"], MODEL)
        p99 = prom.wait_for(f'htr:request_latency_p99:seconds{{model="{MODEL}"}}', lambda v: v[0] > 0, timeout=60)
        assert all(r["health"] == "ok" for r in prom.rules()), [r for r in prom.rules() if r["health"] != "ok"]
        print(f"htr monitor at {url}: p99 of {MODEL} {p99[0] * 1e3:.2f} ms")

        mon.send_signal(signal.SIGINT)
        assert mon.wait(timeout=30) == 0, monitor_out.read_text()
        assert "prometheus stopped (status 0)" in monitor_out.read_text()
    finally:
        for proc in (mon, serve):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _http_double(http_port: int, model: str) -> bool:
    body = json.dumps({"inputs": [{"name": "VALUES", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]})
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/{model}/infer", data=body.encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with OPENER.open(req, timeout=30) as r:
        return json.load(r)["outputs"][0]["data"] == [2.0, 4.0]
