"""Write the serving dashboard (``grafana/dashboards/serving.json``) from the panel list below.

    python monitoring/build_dashboards.py            # rewrite the JSON
    python monitoring/build_dashboards.py --check    # exit 1 if the JSON on disk differs (CI)

Grafana provisions every JSON in ``grafana/dashboards/`` (see ``grafana/provisioning/``). Panels are
listed once here as (title, unit, [(PromQL, legend)]) so the JSON stays consistent: one datasource uid,
a ``$model`` variable for the per-model view, ``$__rate_interval`` in every ``rate``. Panels whose
title starts with ``GPU`` read Triton's GPU metrics, which exist only on a GPU host.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "grafana" / "dashboards" / "serving.json"
DS = {"type": "prometheus", "uid": "prometheus"}
M = 'model=~"$model"'
R = "$__rate_interval"

# (row title, [(panel title, unit, [(expr, legend)], description)])
ROWS = [
    ("Traffic", [
        ("Requests/s", "reqps", [
            (f"sum by (model) (rate(nv_inference_request_success{{{M}}}[{R}]))", "{{model}} ok"),
            (f"sum by (model) (rate(nv_inference_request_failure{{{M}}}[{R}]))", "{{model}} failed"),
        ], "Inference requests per second by model (the ensemble htr counts client requests)."),
        ("Images/s", "short", [
            (f"sum by (model) (rate(nv_inference_count{{{M}}}[{R}]))", "{{model}}"),
        ], "Inferences (batch items) per second: images for preprocess, crnn and ctc_decode."),
        ("Request error ratio (5m)", "percentunit", [
            (f"htr:request_errors:ratio5m{{{M}}}", "{{model}} requests"),
            ("htr:images_refused:ratio5m", "images refused by preprocessing"),
        ], "Failed requests / all requests, and images refused (corrupt, empty, too large) / all images."),
        ("Firing alerts", "short", [
            ('sum by (alertname) (ALERTS{alertstate="firing"}) or vector(0)', "{{alertname}}"),
        ], "Alerts from monitoring/rules/htr.rules.yml that are firing now (0 when none)."),
    ]),
    ("Latency", [
        ("End-to-end latency percentiles", "ms", [
            (f'nv_inference_request_summary_us{{{M}, quantile="0.5"}} / 1000', "{{model}} p50"),
            (f'nv_inference_request_summary_us{{{M}, quantile="0.95"}} / 1000', "{{model}} p95"),
            (f'nv_inference_request_summary_us{{{M}, quantile="0.99"}} / 1000', "{{model}} p99"),
        ], "Server-side request latency quantiles (Triton summaries, `htr serve` enables them)."),
        ("Queue vs compute time per request", "ms", [
            (f"sum by (model) (rate(nv_inference_queue_duration_us{{{M}}}[{R}])) / "
             f"sum by (model) (rate(nv_inference_request_success{{{M}}}[{R}])) / 1000", "{{model}} queue"),
            (f"sum by (model) (rate(nv_inference_compute_infer_duration_us{{{M}}}[{R}])) / "
             f"sum by (model) (rate(nv_inference_request_success{{{M}}}[{R}])) / 1000", "{{model}} compute"),
            (f"sum by (model) (rate(nv_inference_compute_input_duration_us{{{M}}}[{R}]) "
             f"+ rate(nv_inference_compute_output_duration_us{{{M}}}[{R}])) / "
             f"sum by (model) (rate(nv_inference_request_success{{{M}}}[{R}])) / 1000", "{{model}} input+output"),
        ], "Average time a request waits in the scheduler queue vs runs, per model."),
        ("p99 queue time", "ms", [
            (f'nv_inference_queue_summary_us{{{M}, quantile="0.99"}} / 1000', "{{model}}"),
        ], "Growing queue time means demand exceeds capacity."),
        ("p99 latency vs objective", "s", [
            (f"htr:request_latency_p99:seconds{{{M}}}", "{{model}} p99"),
            ("vector(0.5)", "objective (HTRLatencyP99High)"),
        ], "The recorded signal the latency alert fires on."),
    ]),
    ("Batching", [
        ("Average batch size", "short", [
            (f"sum by (model) (rate(nv_inference_count{{{M}}}[{R}])) / "
             f"sum by (model) (rate(nv_inference_exec_count{{{M}}}[{R}]))", "{{model}}"),
        ], "Inference count / execution count: what dynamic batching achieves (1 = no batching)."),
        ("Pending requests", "short", [
            (f"sum by (model) (nv_inference_pending_request_count{{{M}}})", "{{model}}"),
        ], "Requests queued in Triton, not yet executing."),
    ]),
    ("Resources", [
        ("CPU utilisation", "percentunit", [
            ("avg(nv_cpu_utilization)", "CPU"),
        ], "Host CPU use as Triton reports it."),
        ("CPU memory", "bytes", [
            ("max(nv_cpu_memory_used_bytes)", "used"),
            ("max(nv_cpu_memory_total_bytes)", "total"),
        ], "Host memory."),
        ("GPU utilisation", "percentunit", [
            ("avg by (gpu_uuid) (nv_gpu_utilization)", "{{gpu_uuid}}"),
        ], "GPU only: absent on a CPU server."),
        ("GPU memory", "bytes", [
            ("max by (gpu_uuid) (nv_gpu_memory_used_bytes)", "{{gpu_uuid}} used"),
            ("max by (gpu_uuid) (nv_gpu_memory_total_bytes)", "{{gpu_uuid}} total"),
        ], "GPU only: absent on a CPU server."),
    ]),
    ("Input drift and prediction quality", [
        ("Input width (px) p5 / p50 / p95", "short", [
            (f"histogram_quantile({q}, sum by (le) (rate(htr_input_width_pixels_bucket[{R}])))", f"p{int(q * 100)}")
            for q in (0.05, 0.5, 0.95)
        ], "Decoded image widths; training data is 270-390 px."),
        ("Input height (px) p5 / p50 / p95", "short", [
            (f"histogram_quantile({q}, sum by (le) (rate(htr_input_height_pixels_bucket[{R}])))", f"p{int(q * 100)}")
            for q in (0.05, 0.5, 0.95)
        ], "Decoded image heights; training data is 19-72 px."),
        ("Ink ratio p5 / p50 / p95", "percentunit", [
            (f"histogram_quantile({q}, sum by (le) (rate(htr_input_ink_ratio_bucket[{R}])))", f"p{int(q * 100)}")
            for q in (0.05, 0.5, 0.95)
        ], "Share of ink pixels in the network input; ~0 = blank fields, high = dark or noisy scans."),
        ("Images outside the training range (drift signal)", "percentunit", [
            ("htr:input_out_of_range:ratio5m", "{{signal}}"),
            ("vector(0.25)", "alert threshold (HTRInputDrift)"),
        ], "Share of the last 5 minutes' images whose width, height or ink ratio is unlike the training data."),
        ("Prediction confidence", "percentunit", [
            ("htr:prediction_confidence:mean5m", "mean"),
            (f"histogram_quantile(0.1, sum by (le) (rate(htr_prediction_confidence_bucket[{R}])))", "p10"),
            (f"histogram_quantile(0.5, sum by (le) (rate(htr_prediction_confidence_bucket[{R}])))", "p50"),
        ], "How sure the model is; a fall without a model change means the input changed."),
        ("Prediction length and empty share", "short", [
            (f"histogram_quantile(0.5, sum by (le) (rate(htr_prediction_length_chars_bucket[{R}])))", "median length"),
            ("htr:prediction_empty:ratio5m", "empty share"),
        ], "Characters per decoded text; empty texts usually mean blank or unreadable fields."),
        ("Images refused/s", "short", [
            (f"sum(rate(htr_input_failures_total[{R}]))", "refused"),
        ], "Corrupt, empty or oversize images (each gets its own ERROR; the rest of the batch is served)."),
    ]),
]


def _panel(pid: int, title: str, unit: str, targets, description: str, x: int, y: int) -> dict:
    return {
        "id": pid, "type": "timeseries", "title": title, "description": description,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y}, "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DS}
                    for i, (expr, legend) in enumerate(targets)],
    }


def build() -> dict:
    panels, pid, y = [], 1, 0
    for row_title, row_panels in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for k, (title, unit, targets, description) in enumerate(row_panels):
            panels.append(_panel(pid, title, unit, targets, description, 12 * (k % 2), y + 8 * (k // 2)))
            pid += 1
        y += 8 * ((len(row_panels) + 1) // 2)
    return {
        "uid": "htr-serving", "title": "htr-triton: serving", "tags": ["htr", "triton", "serving"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "model", "label": "model", "type": "query", "datasource": DS,
            "query": {"query": "label_values(nv_inference_request_success, model)", "refId": "model"},
            "definition": "label_values(nv_inference_request_success, model)",
            "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        }]},
        "annotations": {"list": []},
        "panels": panels,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the file on disk instead of writing")
    args = parser.parse_args(argv)
    text = json.dumps(build(), indent=2) + "\n"
    if args.check:
        current = OUT.read_text() if OUT.is_file() else ""
        if current != text:
            print(f"{OUT} is out of date: run python monitoring/build_dashboards.py", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({sum(p['type'] != 'row' for p in build()['panels'])} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
