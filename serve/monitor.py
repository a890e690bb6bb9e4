"""``htr monitor``: Prometheus on this host, scraping a running ``htr serve`` with the project's rules.

Example::

    htr serve                     # metrics on http://127.0.0.1:8002/metrics
    htr monitor                   # Prometheus on http://127.0.0.1:9090: graphs, /alerts, /rules; Ctrl-C stops it
    htr monitor --metrics-url http://10.0.0.5:8002/metrics --train-url http://127.0.0.1:9109/metrics

It runs the Debian package's ``/usr/bin/prometheus`` (``apt-get install prometheus``; no Docker) on
``monitoring/prometheus.yml`` changed only in where it reads from: the rule files of ``monitoring/rules/``
and target files for the URLs given, written into ``--data-dir`` (``runs/monitor/`` in the checkout, kept
between runs, with the TSDB and Prometheus' log). The serving and training dashboards read this
Prometheus once a Grafana data source points at it (README, "Load testing and monitoring").

:func:`write_config` and :class:`Prometheus` are the library under the command; tests/test_monitoring.py
runs the same pair.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from htr.paths import ROOT

from .errors import ServerError
from .server import ServerOptions, _connect_host, free_port, port_in_use

MONITORING = ROOT / "monitoring"
#: The Prometheus configuration of every deployment (docker compose, a host, ``htr monitor``, the tests).
CONFIG = MONITORING / "prometheus.yml"
DEFAULT_DATA_DIR = ROOT / "runs" / "monitor"
DEFAULT_PROMETHEUS = "/usr/bin/prometheus"
_SERVE = ServerOptions()
#: Where ``htr serve`` publishes metrics by default (the URL it prints).
DEFAULT_METRICS_URL = f"http://{_connect_host(_SERVE.address)}:{_SERVE.metrics_port}/metrics"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via *_proxy


def scrape_target(url: str) -> dict:
    """A file_sd entry for a metrics URL (``http://host:port/path``) or a bare ``host:port`` (``/metrics``)."""
    if "://" not in url:
        return {"targets": [url]}
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"not a metrics URL: {url!r}")
    labels = {}
    if parts.path not in ("", "/metrics"):
        labels["__metrics_path__"] = parts.path
    if parts.scheme != "http":
        labels["__scheme__"] = parts.scheme
    return {"targets": [parts.netloc], **({"labels": labels} if labels else {})}


def write_config(workdir: str | os.PathLike, targets: Mapping[str, Sequence[str]], interval: str | None = None,
                 rule_files: Sequence[str | os.PathLike] | None = None) -> Path:
    """Write ``workdir/prometheus.yml``: :data:`CONFIG` with each job's target file in ``workdir/targets/``
    holding the URLs of ``targets`` (a job left out: no target), the rule files ``rule_files`` (None: the
    config's own, from ``monitoring/``), and ``interval`` as scrape and evaluation interval (None: the
    config's). Returns its path. A job ``targets`` names that the config lacks is a ValueError."""
    workdir = Path(workdir).resolve()
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if set(targets) - jobs:
        raise ValueError(f"unknown scrape jobs {sorted(set(targets) - jobs)}; {CONFIG} has {sorted(jobs)}")
    if interval:
        config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(Path(f).resolve()) for f in rule_files] if rule_files is not None else \
        [str(CONFIG.parent / f) for f in config["rule_files"]]
    (workdir / "targets").mkdir(parents=True, exist_ok=True)
    for job in config["scrape_configs"]:
        target_file = workdir / "targets" / f"{job['job_name']}.yml"
        entries = [scrape_target(url) for url in targets.get(job["job_name"], ())]
        target_file.write_text(yaml.safe_dump(entries))
        job["file_sd_configs"] = [{"files": [str(target_file)]}]
    path = workdir / "prometheus.yml"
    path.write_text(f"# written by htr monitor from {CONFIG}\n" + yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus:
    """A ``prometheus`` child process on ``config``, its TSDB in ``data_dir``, listening on ``address:port``
    (port 0: a free one); a context manager that starts and stops it. Its output goes to ``data_dir``'s
    ``prometheus.log``."""

    def __init__(self, config: str | os.PathLike, data_dir: str | os.PathLike, port: int = 9090,
                 address: str = "127.0.0.1", binary: str | os.PathLike = DEFAULT_PROMETHEUS, retention: str = "15d"):
        self.config, self.data_dir = Path(config), Path(data_dir)
        self.address, self.port = address, port or free_port(address)
        self.binary = Path(binary)
        self.url = f"http://{_connect_host(address)}:{self.port}"
        self.log_path = self.data_dir / "prometheus.log"
        self.cmd = [str(self.binary), f"--config.file={self.config}", f"--storage.tsdb.path={self.data_dir / 'data'}",
                    f"--storage.tsdb.retention.time={retention}",
                    f"--web.listen-address={f'[{address}]' if ':' in address else address}:{self.port}"]
        self._proc: subprocess.Popen | None = None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(deque(f, maxlen=lines))
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> Prometheus:
        """Spawn it and wait until ``/-/ready`` answers 200; ServerError (and no process) otherwise."""
        if not os.access(self.binary, os.X_OK):
            raise ServerError(f"prometheus not found at {self.binary}: install Debian's package "
                              "(sudo apt-get install prometheus; `make test-tools` does) or pass its path")
        if port_in_use(self.address, self.port):
            raise ServerError(f"port {self.port} on {self.address} is already in use (Debian's prometheus service "
                              "listens on 9090: `systemctl stop prometheus`, or choose another port)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)  # the terminal's Ctrl-C reaches us, not it
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise ServerError(f"prometheus exited with status {self._proc.returncode}; last lines of "
                                  f"{self.log_path}:\n{self.log_tail()}")
            try:
                with _OPENER.open(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"prometheus was not ready after {timeout:g} s; last lines of {self.log_path}:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.25)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (Prometheus flushes its TSDB), then SIGKILL after ``timeout`` s; returns the exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.terminate()
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()

    def __enter__(self) -> Prometheus:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------
# the command


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("monitor", help="run Prometheus (Debian's) against a running htr serve, with the rules",
                       description=__doc__, formatter_class=formatter_class)
    p.add_argument("--metrics-url", default=DEFAULT_METRICS_URL, help="Triton's metrics (what htr serve prints)")
    p.add_argument("--train-url", default=None,
                   help="a training exporter's metrics, e.g. http://127.0.0.1:9109/metrics (None: not scraped)")
    p.add_argument("--address", default="127.0.0.1", help="address Prometheus listens on")
    p.add_argument("--port", type=int, default=9090, help="Prometheus port (0: a free one)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="config, target files, TSDB and log (kept between runs)")
    p.add_argument("--retention", default="15d", help="how long Prometheus keeps samples")
    p.add_argument("--prometheus", type=Path, default=Path(DEFAULT_PROMETHEUS), help="the prometheus executable")
    p.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for Prometheus' /-/ready")
    p.set_defaults(func=run)


def _say(msg: str, err: bool = False) -> None:
    print(f"htr monitor: {msg}", file=sys.stderr if err else sys.stdout, flush=True)


def _answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def run(args) -> int:
    targets = {"triton": [args.metrics_url]} | ({"htr-train": [args.train_url]} if args.train_url else {})
    try:
        config = write_config(args.data_dir, targets)
    except ValueError as e:
        _say(f"error: {e}", err=True)
        return 2
    prom = Prometheus(config, args.data_dir, port=args.port, address=args.address, binary=args.prometheus,
                      retention=args.retention)
    signals: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: signals.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            prom.start(args.ready_timeout)
        except ServerError as e:
            _say(f"error: {e}", err=True)
            return 2
        _say(f"Prometheus {prom.url}   (alerts: {prom.url}/alerts, rules: {prom.url}/rules, "
             f"targets: {prom.url}/targets)")
        for job, urls in targets.items():
            for url in urls:
                state = "answers" if _answers(url) else "not answering yet; Prometheus keeps scraping it"
                _say(f"scraping {job:<9} {url} ({state})")
        _say(f"config, data and log in {args.data_dir}; Ctrl-C stops it")
        while not signals:
            rc = prom.returncode
            if rc is not None:
                _say(f"error: prometheus exited with status {rc}; last lines of {prom.log_path}:\n{prom.log_tail()}",
                     err=True)
                return 1
            time.sleep(0.2)
        _say(f"{signal.Signals(signals[0]).name}: stopping prometheus")
        rc = prom.stop()
        _say(f"prometheus stopped (status {rc})")
        return 0 if rc == 0 else 1
    finally:
        prom.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
