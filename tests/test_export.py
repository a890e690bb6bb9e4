"""htr.export.build (export/build_engine.py, htr export): engines, parity against PyTorch, and the generated
repository's configs."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from htr.config import HTRConfig, ModelConfig
from htr.export.build import ExportError, ExportUsageError, build_repository
from htr.export.build_engine import main as build_engine, parse_args
from htr.export.engines import Shapes, load_torchscript, onnx_config
from htr.export.repository import RepositoryOptions, read_config, read_options, write_repository
from htr.model import CRNN, save_checkpoint
from htr.threads import thread_plan

SMALL = HTRConfig(model=ModelConfig(cnn_channels=(8, 16, 16, 16, 32, 32), lstm_hidden=16))


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(path, CRNN(SMALL).eval(), SMALL)
    return path


def test_build_repository_cpu_with_parity(tmp_path, small_checkpoint, kaggle_dir, capsys):
    repo, engines = tmp_path / "repo", tmp_path / "engines"
    report = build_repository(small_checkpoint, repo, formats="torchscript,onnx", engines_dir=engines, data=kaggle_dir,
                              parity_images=16, precision="fp32")
    out = capsys.readouterr().out
    assert report.ok, out
    assert report.repository == repo and report.artifacts == {"torchscript": engines / "model.pt",
                                                              "onnx": engines / "model.onnx"}
    assert report.table in out and [r.engine for r in report.results] == ["torchscript (CPU, FP32)",
                                                                           "onnx (onnxruntime CPU, FP32)"]
    assert "| torchscript (CPU, FP32) |" in out and "| onnx (onnxruntime CPU, FP32) |" in out
    assert "MISMATCH" not in out and out.count("| OK |") == 2
    # configs come from the checkpoint, embedded everywhere
    _, ts_cfg = load_torchscript(engines / "model.pt")
    assert ts_cfg == SMALL and onnx_config(engines / "model.onnx") == SMALL
    names = {p.name for p in repo.iterdir()}
    assert names == {"htr", "preprocess", "crnn", "ctc_decode"}
    for name in names:
        cfg = read_config(repo / name)
        assert HTRConfig.from_json(cfg.parameters["htr_config"].string_value) == SMALL
        assert cfg.max_batch_size == 64
        if name != "htr":
            # dynamic batching on every stage; no waiting by default (the queue fills while a stage is busy)
            assert cfg.HasField("dynamic_batching") and len(cfg.instance_group) == 1
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 0 and not cfg.dynamic_batching.preferred_batch_size
            assert cfg.version_policy.latest.num_versions == 1 and len(cfg.model_warmup) >= 1
    crnn = read_config(repo / "crnn")
    assert crnn.backend == "python" and list(crnn.input[0].dims) == [1, 32, -1]
    assert list(crnn.output[0].dims) == [-1, SMALL.num_classes]
    # the default CPU engine: ONNX Runtime on the ONNX file, with the thread plan's intra-op threads
    assert (repo / "crnn" / "1" / "model.onnx").is_file() and (repo / "crnn" / "1" / "model.py").is_file()
    assert crnn.parameters["engine"].string_value == "onnxruntime" and crnn.parameters["precision"].string_value == "fp32"
    assert int(crnn.parameters["intra_op_threads"].string_value) == thread_plan().crnn_threads
    steps = read_config(repo / "htr").ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["preprocess", "crnn", "ctc_decode"]
    assert dict(steps[2].input_map) == {"LOGPROBS": "logprobs", "INPUT_ERROR": "preprocess_error"}


def test_explicit_tensorrt_without_gpu_fails_clearly(tmp_path, small_checkpoint, kaggle_dir, capsys):
    """The command line itself: exit code 1 and the ``error:`` line on stderr."""
    rc = build_engine(["--checkpoint", str(small_checkpoint), "--repository", str(tmp_path / "r"), "--engines",
                       str(tmp_path / "e"), "--formats", "onnx,tensorrt", "--data", str(kaggle_dir),
                       "--parity-images", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and "tensorrt was asked for but cannot be built here" in err
    assert not (tmp_path / "r").exists()


def test_default_formats_skip_tensorrt_with_the_reason(tmp_path, small_checkpoint, kaggle_dir, capsys):
    report = build_repository(small_checkpoint, tmp_path / "r", engines_dir=tmp_path / "e", data=kaggle_dir,
                              parity_images=4)
    out = capsys.readouterr().out
    assert report.ok and "skipping tensorrt: " in out and (tmp_path / "r" / "htr" / "config.pbtxt").is_file()
    assert set(report.artifacts) == {"torchscript", "onnx"}
    assert f"skipping tensorrt: {report.skipped['tensorrt']}" in out


def test_parity_mismatch_raises_and_writes_nothing(tmp_path, small_checkpoint, kaggle_dir, monkeypatch):
    import htr.export.build as build

    monkeypatch.setattr(build, "FP32_TOL", -1.0)  # no engine can pass: the build must stop before writing
    with pytest.raises(build.ParityError, match="does not match PyTorch; the repository was not written") as e:
        build_repository(small_checkpoint, tmp_path / "r", formats="onnx", engines_dir=tmp_path / "e",
                         data=kaggle_dir, parity_images=4, progress=None)
    report = e.value.report
    assert not report.ok and report.repository is None and "MISMATCH" in report.table
    assert not (tmp_path / "r").exists()


def test_contradictory_requests_are_usage_errors(tmp_path, small_checkpoint, capsys):
    """Refused before anything is built: ``ExportUsageError`` from the library, exit code 2 from the CLI."""
    with pytest.raises(ExportUsageError, match=r"unknown format\(s\) \['tflite'\]"):
        build_repository(small_checkpoint, tmp_path / "r", formats="torchscript,tflite", progress=None)
    with pytest.raises(ExportUsageError, match="include onnx in --formats"):
        build_repository(small_checkpoint, tmp_path / "r", formats=["torchscript"], progress=None)
    with pytest.raises(ExportUsageError, match="include torchscript in --formats"):
        build_repository(small_checkpoint, tmp_path / "r", options=RepositoryOptions(cpu_engine="torchscript"),
                         formats=["onnx"], progress=None)
    with pytest.raises(ExportUsageError, match="precision must be one of"):
        build_repository(small_checkpoint, tmp_path / "r", precision="int4", progress=None)
    assert issubclass(ExportUsageError, ExportError)
    rc = build_engine(["--checkpoint", str(small_checkpoint), "--repository", str(tmp_path / "r"), "--formats",
                       "torchscript"])
    assert rc == 2 and "error: --target cpu --cpu-engine onnxruntime serves the ONNX file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_htr_export_has_the_same_flags():
    from htr.cli import build_parser

    argv = ["--target", "gpu", "--gpu-engine", "onnxruntime", "--max-width", "512", "--no-dynamic-batching"]
    shared = vars(build_parser("export").parse_args(["export", *argv]))
    assert {k: v for k, v in shared.items() if k not in ("command", "func")} == vars(parse_args(argv))


@pytest.mark.parametrize("engine,platform,in_name,filename", [
    ("tensorrt", "tensorrt_plan", "PIXELS", "model.plan"),
    ("onnxruntime", "onnxruntime_onnx", "PIXELS", "model.onnx"),
    ("libtorch", "pytorch_libtorch", "PIXELS__0", "model.pt"),
])
def test_gpu_repository_variant(tmp_path, engine, platform, in_name, filename):
    artifact = tmp_path / "engine.bin"
    artifact.write_bytes(b"stand-in engine file")  # the generator only copies it
    opts = RepositoryOptions(target="gpu", gpu_engine=engine, shapes=Shapes(max_batch=32, opt_batch=16))
    write_repository(tmp_path / "repo", SMALL, opts, artifact)
    crnn = read_config(tmp_path / "repo" / "crnn")
    assert crnn.platform == platform and crnn.default_model_filename == filename
    assert crnn.instance_group[0].kind == crnn.instance_group[0].KIND_GPU
    assert crnn.input[0].name == in_name and crnn.max_batch_size == 32
    assert (tmp_path / "repo" / "crnn" / "1" / filename).read_bytes() == b"stand-in engine file"
    step = read_config(tmp_path / "repo" / "htr").ensemble_scheduling.step[1]
    assert dict(step.input_map) == {in_name: "pixels"}
    # the python stages are the same files in both variants
    assert (tmp_path / "repo" / "preprocess" / "1" / "model.py").is_file()


def test_lexicon_switches_decoder_to_beam(tmp_path, small_checkpoint):
    opts = RepositoryOptions(lexicon=["MARTIN", "LEA"])
    write_repository(tmp_path / "repo", SMALL, opts, small_checkpoint)
    dec = read_config(tmp_path / "repo" / "ctc_decode")
    assert dec.parameters["decoder"].string_value == "beam"
    assert (tmp_path / "repo" / "ctc_decode" / "1" / "lexicon.txt").read_text().split() == ["MARTIN", "LEA"]
    assert json.loads(dec.parameters["htr_config"].string_value)["alphabet"] == SMALL.alphabet


@pytest.mark.parametrize("opts", [
    RepositoryOptions(precision="int8", shapes=Shapes(max_batch=16, opt_batch=8, opt_width=256, max_width=512),
                      preprocess_instances=2, crnn_instances=3, decode_instances=2, preprocess_threads=2,
                      crnn_threads=1,
                      queue_delay_us=100, crnn_queue_delay_us=250, max_pixels=1_000_000, max_bytes=4096,
                      max_request_bytes=65536, lexicon=["LEA", "MARTIN"], version=3),
    RepositoryOptions(cpu_engine="torchscript", dynamic_batching=False, crnn_threads=2),
    RepositoryOptions(target="gpu", gpu_engine="libtorch", shapes=Shapes(max_batch=32, opt_batch=16), version=2),
], ids=["cpu-onnxruntime", "cpu-torchscript", "gpu-libtorch"])
def test_read_options_gives_back_what_write_repository_wrote(tmp_path, opts):
    """What ``htr publish`` rebuilds a served repository with: every serving setting the configs hold."""
    artifact = tmp_path / "engine.bin"
    artifact.write_bytes(b"stand-in engine file")
    write_repository(tmp_path / "repo", SMALL, opts, artifact)
    back = read_options(tmp_path / "repo")
    if opts.target == "gpu":  # a GPU crnn states no thread count (nor the TensorRT profile's widths)
        back = dataclasses.replace(back, crnn_threads=opts.crnn_threads)
    assert back == opts


def test_int8_outside_the_accuracy_gate_fails_and_auto_falls_back_to_fp32(tmp_path, small_checkpoint, kaggle_dir,
                                                                          monkeypatch, capsys):
    """``--precision int8`` is refused (exit 1, nothing written) when INT8 reads the validation images worse than the
    gate allows; ``auto`` then serves FP32 and says why. The gate is made impossible to pass here."""
    import htr.export.quantize as quantize
    from htr.export.build import PrecisionError

    monkeypatch.setattr(quantize, "MAX_EXACT_DROP", -1.0)  # INT8 would have to read 100 points better
    with pytest.raises(PrecisionError, match="INT8 reads the validation images worse than the gate allows") as e:
        build_repository(small_checkpoint, tmp_path / "r", formats="onnx", engines_dir=tmp_path / "e",
                         data=kaggle_dir, parity_images=4, precision="int8", progress=None)
    assert not e.value.gate.ok and e.value.gate.images > 100 and not (tmp_path / "r").exists()
    rc = build_engine(["--checkpoint", str(small_checkpoint), "--repository", str(tmp_path / "r"), "--engines",
                       str(tmp_path / "e"), "--formats", "onnx", "--data", str(kaggle_dir), "--parity-images", "4",
                       "--precision", "int8"])
    captured = capsys.readouterr()
    assert rc == 1 and "error: INT8 reads the validation images worse" in captured.err
    assert "| int8 |" in captured.out and "| fp32 |" in captured.out  # the report prints both
    report = build_repository(small_checkpoint, tmp_path / "r", formats="onnx", engines_dir=tmp_path / "e",
                              data=kaggle_dir, parity_images=4, precision="auto")
    assert report.options.precision == "fp32" and "serving FP32: INT8 is outside the accuracy gate" in capsys.readouterr().out
    assert read_config(tmp_path / "r" / "crnn").parameters["precision"].string_value == "fp32"


def test_thread_plan_never_runs_more_pool_threads_than_cores():
    """One spinning-free crnn pool the size of the cores; preprocess and ctc_decode single-threaded."""
    for cores in (1, 2, 3, 4, 8, 64):
        plan = thread_plan(cores)
        assert plan.pool_threads == plan.crnn_threads == cores and plan.train_threads == cores
        assert plan.preprocess_threads == 1 and plan.compute_threads == cores + 1


def test_export_without_the_dataset_checks_parity_on_the_shipped_samples(tmp_path, small_checkpoint, capsys):
    """No Kaggle folder: parity runs on samples/ (with a note), INT8 falls back to FP32 (no labels to gate it)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    report = build_repository(small_checkpoint, tmp_path / "r", engines_dir=tmp_path / "e", data=empty,
                              parity_images=8)
    out = capsys.readouterr().out
    assert report.ok and report.repository == tmp_path / "r" and len(report.results) == 2
    assert "the parity check uses the 8 sample images shipped in" in out and "/samples" in out
    assert report.options.precision == "fp32" and "serving FP32: INT8 needs labelled images" in out
    rc = build_engine(["--checkpoint", str(small_checkpoint), "--repository", str(tmp_path / "r2"), "--engines",
                       str(tmp_path / "e2"), "--data", str(empty), "--formats", "onnx", "--parity-images", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "WARNING: no parity check" in out and "parity against PyTorch" not in out
    assert (tmp_path / "r2" / "crnn" / "1" / "model.onnx").is_file()
