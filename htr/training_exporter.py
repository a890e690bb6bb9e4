"""The Prometheus exporter of a training run (``htr_train_*`` gauges), served by prometheus-client.

``monitoring/grafana/dashboards/training.json`` reads these; ``htr train --metrics-port`` chooses the port
(0: no exporter; under torchrun only rank 0 serves it). Kept apart from :mod:`htr.scores`, which computes the
recognition scores (CER, exact match) that these gauges carry.
"""
from __future__ import annotations

import torch


class TrainingExporter:
    """Prometheus gauges for a training run (``htr_train_*``), served by prometheus-client."""

    def __init__(self, port: int, addr: str, run_name: str, device: str):
        from prometheus_client import REGISTRY, Counter, Gauge, Info, start_http_server

        names = getattr(REGISTRY, "_names_to_collectors", {})
        for collector in {c for n, c in names.items() if n.startswith("htr_train_")}:
            REGISTRY.unregister(collector)  # a second run in the same process (tests)
        self.loss = Gauge("htr_train_loss", "CTC loss, mean over the last logging window", ["split"])
        self.cer = Gauge("htr_train_cer", "character error rate", ["split"])
        self.exact = Gauge("htr_train_exact_match", "exact-match rate", ["split"])
        self.best_cer = Gauge("htr_train_best_cer", "best validation CER so far")
        self.lr = Gauge("htr_train_learning_rate", "current learning rate")
        self.rate = Gauge("htr_train_samples_per_second", "training throughput")
        self.samples = Counter("htr_train_samples", "training samples processed")
        self.epoch = Gauge("htr_train_epoch", "current epoch (1-based)")
        self.step = Gauge("htr_train_step", "optimizer steps done")
        self.memory = Gauge("htr_train_memory_bytes", "memory in use", ["kind"])
        self.pseudo = Gauge("htr_train_pseudo_labels", "pseudo-labelled images in the training set")
        Info("htr_train_run", "the training run").info({"run": run_name, "device": device})
        self.server = None
        if port:
            try:
                self.server, _ = start_http_server(port, addr=addr)
            except OSError as e:
                raise SystemExit(f"error: cannot serve training metrics on {addr}:{port} ({e.strerror}): another "
                                 "run may hold the port; pick a free --metrics-port, or 0 for no exporter") from None

    def update_memory(self, device: torch.device):
        try:
            import resource

            self.memory.labels("rss_max").set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        except Exception:  # noqa: BLE001
            pass
        if device.type == "cuda":
            self.memory.labels("cuda_allocated").set(torch.cuda.memory_allocated(device))
            self.memory.labels("cuda_reserved").set(torch.cuda.memory_reserved(device))

    def close(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
