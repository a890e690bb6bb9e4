"""Input-drift and quality metrics published from inside the served pipeline.

The python-backend models (``preprocess``, ``ctc_decode``) create these histograms once in ``initialize``
through Triton's python-backend metrics API (``pb_utils.MetricFamily``); Triton serves them on its
metrics port next to its own ``nv_*`` metrics, so Prometheus scrapes one endpoint.

=============================== ======================= ================================================
metric                          observed per            what a change means
=============================== ======================= ================================================
``htr_input_width_pixels``      decoded image           scans from another form, camera or crop
``htr_input_height_pixels``     decoded image           (idem)
``htr_input_ink_ratio``         preprocessed image      share of ink pixels in the network input:
                                                        blank fields (~0) or dark/noisy scans (high)
``htr_input_failures_total``    image refused           corrupt, empty, too large (counter)
``htr_prediction_confidence``   decoded text            the model is less sure: drift or a bad model
``htr_prediction_length_chars`` decoded text            empty or runaway predictions
=============================== ======================= ================================================

Bucket bounds are chosen so the range seen in the training data (``REFERENCE_RANGES``, measured on the
shared Kaggle images: widths 270-390 px, heights 19-72 px, ink 0.8-7 % of the 32x256 input) falls on
bucket edges: ``monitoring/rules/htr.rules.yml`` computes the share of traffic outside those ranges
(the drift signal) from the ``le`` buckets named here, and ``tests/test_monitoring.py`` checks that every
``le`` a rule uses is one of these bounds.
"""
from __future__ import annotations

WIDTH_BUCKETS = [64, 128, 192, 256, 320, 384, 448, 512, 768, 1024, 2048, 4096, 8192]
HEIGHT_BUCKETS = [8, 16, 24, 32, 40, 48, 64, 96, 128, 256, 512, 1024]
INK_BUCKETS = [0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.3, 0.5]
CONFIDENCE_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
LENGTH_BUCKETS = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 24, 32]

# (low, high]: the in-distribution range of each input signal, as bucket edges (see module docstring)
REFERENCE_RANGES = {"width": (192, 512), "height": (16, 96), "ink": (0.005, 0.12)}


class _Histograms:
    """Histogram metrics with fixed labels; ``observe`` takes an iterable (one IPC message per value).

    Metrics never fail a request: if the server runs with metrics off (``--allow-metrics=false``) or an
    update fails, the error is logged once and the metrics go quiet.
    """

    def __init__(self, pb_utils, labels: dict[str, str], specs: dict[str, tuple[str, list[float]]]):
        self._log, self._metrics = pb_utils.Logger, {}
        try:
            kind = pb_utils.MetricFamily.HISTOGRAM
            # families must outlive their metrics (the stub refuses a metric whose family was deleted)
            self._families = {k: pb_utils.MetricFamily(name=name, description=_DESCRIPTIONS[name], kind=kind)
                              for k, (name, _) in specs.items()}
            self._metrics = {k: self._families[k].Metric(labels=labels, buckets=[float(b) for b in buckets])
                             for k, (_, buckets) in specs.items()}
        except Exception as e:  # noqa: BLE001 - the pipeline serves without its metrics
            self._disable(e)

    def _disable(self, error: Exception) -> None:
        if not getattr(self, "_disabled", False):
            self._log.log_warn(f"htr drift/quality metrics disabled: {error}")
        self._metrics, self._disabled = {}, True

    def observe(self, key: str, values) -> None:
        metric = self._metrics.get(key)
        if metric is None:
            return
        try:
            for v in values:
                metric.observe(float(v))
        except Exception as e:  # noqa: BLE001
            self._disable(e)


_DESCRIPTIONS = {
    "htr_input_width_pixels": "Width of each decoded input image (pixels)",
    "htr_input_height_pixels": "Height of each decoded input image (pixels)",
    "htr_input_ink_ratio": "Share of ink pixels in each preprocessed network input (0-1)",
    "htr_prediction_confidence": "Confidence of each decoded text (0-1)",
    "htr_prediction_length_chars": "Length of each decoded text (characters)",
}


class InputMetrics(_Histograms):
    """Published by ``preprocess``: image size, ink ratio, refused images."""

    def __init__(self, pb_utils, model: str, version: str):
        labels = {"model": model, "version": str(version)}
        super().__init__(pb_utils, labels, {
            "width": ("htr_input_width_pixels", WIDTH_BUCKETS),
            "height": ("htr_input_height_pixels", HEIGHT_BUCKETS),
            "ink": ("htr_input_ink_ratio", INK_BUCKETS),
        })
        self._failures = None
        if self._metrics:
            try:
                self._failure_family = pb_utils.MetricFamily(
                    name="htr_input_failures_total", kind=pb_utils.MetricFamily.COUNTER,
                    description="Images refused by preprocessing (corrupt, empty, too large)")
                self._failures = self._failure_family.Metric(labels=labels)
            except Exception as e:  # noqa: BLE001
                self._disable(e)

    def record(self, images, ink_ratios) -> None:
        """``images``: the decoded arrays (H x W [x C]) that were preprocessed; ``ink_ratios`` per image."""
        self.observe("width", (im.shape[1] for im in images))
        self.observe("height", (im.shape[0] for im in images))
        self.observe("ink", ink_ratios)

    def record_failures(self, count: int) -> None:
        if count and self._failures is not None and self._metrics:
            try:
                self._failures.increment(float(count))
            except Exception as e:  # noqa: BLE001
                self._disable(e)


class PredictionMetrics(_Histograms):
    """Published by ``ctc_decode``: confidence and length of each text (failed items are not observed)."""

    def __init__(self, pb_utils, model: str, version: str):
        super().__init__(pb_utils, {"model": model, "version": str(version)}, {
            "confidence": ("htr_prediction_confidence", CONFIDENCE_BUCKETS),
            "length": ("htr_prediction_length_chars", LENGTH_BUCKETS),
        })

    def record(self, texts, confidences) -> None:
        self.observe("confidence", confidences)
        self.observe("length", (len(t) for t in texts))
