"""export/build_engine.py: engines, parity against PyTorch, and the generated repository's configs."""
from __future__ import annotations

import json

import pytest
import torch

from htr.config import HTRConfig, ModelConfig
from htr.export.build_engine import main as build_engine
from htr.export.engines import Shapes, load_torchscript, onnx_config
from htr.export.repository import RepositoryOptions, read_config, write_repository
from htr.model import CRNN, save_checkpoint

SMALL = HTRConfig(model=ModelConfig(cnn_channels=(8, 16, 16, 16, 32, 32), lstm_hidden=16))


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(path, CRNN(SMALL).eval(), SMALL)
    return path


def test_build_engine_cpu_repository_with_parity(tmp_path, small_checkpoint, kaggle_dir, capsys):
    repo, engines = tmp_path / "repo", tmp_path / "engines"
    rc = build_engine(["--checkpoint", str(small_checkpoint), "--repository", str(repo), "--engines", str(engines),
                       "--formats", "torchscript,onnx", "--data", str(kaggle_dir), "--parity-images", "16"])
    out = capsys.readouterr().out
    assert rc == 0, out
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
            assert cfg.dynamic_batching.max_queue_delay_microseconds > 0 and len(cfg.instance_group) == 1
            assert cfg.version_policy.latest.num_versions == 1 and len(cfg.model_warmup) >= 1
    crnn = read_config(repo / "crnn")
    assert crnn.backend == "python" and list(crnn.input[0].dims) == [1, 32, -1]
    assert list(crnn.output[0].dims) == [-1, SMALL.num_classes]
    assert (repo / "crnn" / "1" / "model.pt").is_file() and (repo / "crnn" / "1" / "model.py").is_file()
    steps = read_config(repo / "htr").ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["preprocess", "crnn", "ctc_decode"]
    assert dict(steps[2].input_map) == {"LOGPROBS": "logprobs", "INPUT_ERROR": "preprocess_error"}


def test_explicit_tensorrt_without_gpu_fails_clearly(tmp_path, small_checkpoint, kaggle_dir, capsys):
    rc = build_engine(["--checkpoint", str(small_checkpoint), "--repository", str(tmp_path / "r"), "--engines",
                       str(tmp_path / "e"), "--formats", "torchscript,tensorrt", "--data", str(kaggle_dir),
                       "--parity-images", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and "tensorrt was asked for but cannot be built here" in err
    assert not (tmp_path / "r").exists()


def test_default_formats_skip_tensorrt_with_the_reason(tmp_path, small_checkpoint, kaggle_dir, capsys):
    rc = build_engine(["--checkpoint", str(small_checkpoint), "--repository", str(tmp_path / "r"), "--engines",
                       str(tmp_path / "e"), "--data", str(kaggle_dir), "--parity-images", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "skipping tensorrt: " in out and (tmp_path / "r" / "htr" / "config.pbtxt").is_file()


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
