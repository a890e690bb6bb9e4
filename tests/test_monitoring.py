"""Monitoring: a real Prometheus (Debian package) scraping a real Triton while Locust loads it.

- every PromQL expression of every Grafana panel and every recording/alert rule is evaluated through
  Prometheus' HTTP API: each parses and returns data (GPU panels exempt: this machine has no GPU, so
  Triton exports no ``nv_gpu_*`` series; their expressions must still parse);
- Locust's request count equals Triton's ``nv_inference_request_success`` increase within 1 %;
- the drift alert fires after a burst of images unlike the training data;
- the rules, the Prometheus config, docker-compose.yml and the Grafana provisioning are consistent.

Prometheus runs ``monitoring/prometheus.yml`` with only the scrape targets replaced and the intervals
set to 1 s; the rule file is the shipped one (the drift test shortens its alerts' ``for:`` to 0 s so it
does not have to wait ten minutes).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MON = ROOT / "monitoring"
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


class Prometheus:
    """A Prometheus server on a free loopback port, configured from monitoring/prometheus.yml."""

    def __init__(self, workdir: Path, targets: dict[str, str], for_override: str | None = None):
        from htr.serve import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load((MON / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        jobs = {job["job_name"] for job in config["scrape_configs"]}
        assert set(targets) <= jobs, f"unknown scrape jobs {set(targets) - jobs}"
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}] if job["job_name"] in targets else []
        rules = yaml.safe_load(RULES.read_text())
        if for_override is not None:
            for group in rules["groups"]:
                for rule in group["rules"]:
                    if "alert" in rule:
                        rule["for"] = for_override
        (workdir / "rules").mkdir(parents=True, exist_ok=True)
        (workdir / "rules" / RULES.name).write_text(yaml.safe_dump(rules))
        assert config["rule_files"] == [f"rules/{RULES.name}"], config["rule_files"]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.cmd = [_binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"]
        self.log = workdir / "prometheus.log"
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                with OPENER.open(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("prometheus not ready after 60 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

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
    for signal, (low, high) in tm.REFERENCE_RANGES.items():
        assert f'le="{low}"' in RULES.read_text() and f'le="{high}"' in RULES.read_text(), signal


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
    triton_target = config["scrape_configs"][0]["static_configs"][0]["targets"][0]
    host, port = triton_target.split(":")
    assert host in services and f"--metrics-port={port}" in services["triton"]["command"]

    graf = mounts("grafana")
    prov_dir = graf["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((prov_dir / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources}
    assert datasources[0]["url"] == "http://prometheus:9090" and "prometheus" in services
    for provider in yaml.safe_load((prov_dir / "dashboards" / "htr.yml").read_text())["providers"]:
        dash_dir = graf[provider["options"]["path"]]
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
