"""A checkpoint's own decoding (beam search + name model, weights chosen on validation) travels with it: offline
reads, ``htr eval``, ``htr tune-decoder`` and the served ``ctc_decode`` all use the same one."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from htr.ctc_decoder import CTCDecoder, DecodingSpec, checkpoint_decoding, name_model_bytes
from htr.data import read_kaggle
from htr.model import load_checkpoint, save_checkpoint, load_model
from htr.offline import OfflineRecognizer


@pytest.fixture(scope="module")
def name_model(kaggle_dir):
    from htr.name_model import build_name_model

    return build_name_model(kaggle_dir / "names_corpus.txt", kaggle_dir / "labels.csv", order=5, n_faker=200)


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory, checkpoint, name_model):
    """The shipped weights with a beam + name-model decoding whose weight is strong enough to change reads."""
    model, cfg, ckpt = load_model(checkpoint)
    path = tmp_path_factory.mktemp("lm") / "lm.pt"
    entry = {**DecodingSpec("beam", 10, 1.0, 1.0).__dict__, "name_model_npz": name_model_bytes(name_model)}
    save_checkpoint(path, model, cfg, decoding=entry)
    return path


def test_spec_round_trips_through_parameters_and_checkpoints(lm_checkpoint, checkpoint, name_model):
    spec = DecodingSpec("beam", 8, 0.4, 1.5)
    assert DecodingSpec.from_params(spec.to_params()) == spec
    assert checkpoint_decoding(load_checkpoint(checkpoint))[0].decoder in ("greedy", "beam")
    spec, lm = checkpoint_decoding(load_checkpoint(lm_checkpoint))
    assert spec == DecodingSpec("beam", 10, 1.0, 1.0)
    assert lm.score("MARTIN") == name_model.score("MARTIN")  # the bytes are the model


def test_offline_default_is_the_checkpoints_decoding_and_greedy_is_one_flag_away(lm_checkpoint, kaggle_dir):
    samples, _ = read_kaggle(kaggle_dir / "labels.csv")
    paths = [s.path for s in samples[:120]]
    rec = OfflineRecognizer(lm_checkpoint)
    assert rec.decoder == "beam" and "name model (weight 1, bonus 1)" in rec.codec.describe()
    lm_reads = rec.predict_files(paths)
    greedy = OfflineRecognizer(lm_checkpoint, decoder="greedy").predict_files(paths)
    assert sum(a[0] != b[0] for a, b in zip(lm_reads, greedy)) >= 1  # the name model is really in use
    no_lm = OfflineRecognizer(lm_checkpoint, decoder="beam", name_model=False)
    assert no_lm.codec.name_model is None


def test_eval_without_decoder_flags_uses_the_checkpoints_decoding(lm_checkpoint, kaggle_dir, capsys):
    from htr.cli import main

    assert main(["eval", "--checkpoint", str(lm_checkpoint), "--labels", str(kaggle_dir / "labels.csv"),
                 "--split", "eval", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decoder"].startswith("beam 10 + name model") and out["n"] == 252


def test_tune_decoder_chooses_on_the_validation_part_and_writes_the_choice(tmp_path, checkpoint, kaggle_dir,
                                                                           name_model, capsys):
    from htr.cli import main

    lm_path = name_model.save(tmp_path / "names.npz")
    out = tmp_path / "tuned.pt"
    assert main(["tune-decoder", "--checkpoint", str(checkpoint), "--name-model", str(lm_path), "--data",
                 str(kaggle_dir), "--weights", "0.3", "--bonuses", "0,1", "--out", str(out),
                 "--json", str(tmp_path / "grid.json")]) == 0
    text = capsys.readouterr().out
    assert "validation part of the train side: 12" in text and "**chosen**" in text
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert len(grid["rows"]) == 3 and grid["images"] == int(text.split("train side: ")[1].split()[0])
    chosen = DecodingSpec(**grid["chosen"])
    spec, lm = checkpoint_decoding(load_checkpoint(out))
    assert spec == chosen and (lm is not None) == (chosen.decoder == "beam")
    assert main(["tune-decoder", "--checkpoint", str(checkpoint), "--name-model", str(tmp_path / "none.npz")]) == 2


def test_tune_decoder_pools_the_validation_parts_of_several_sources(tmp_path, checkpoint, kaggle_dir, name_model,
                                                                     capsys):
    """``--data`` repeats as ``htr train --real`` does (a folder, or CSV:IMAGES for reviewed scans of another
    folder): the validation parts are pooled. The same labels twice give twice the images, and the same choice."""
    from htr.cli import main

    lm_path = name_model.save(tmp_path / "names.npz")
    reviewed = tmp_path / "reviewed.csv"
    reviewed.write_text((kaggle_dir / "labels.csv").read_text())
    grids = []
    for extra in ([], ["--data", f"{reviewed}:{kaggle_dir / 'labelled'}"]):
        assert main(["tune-decoder", "--checkpoint", str(checkpoint), "--name-model", str(lm_path), "--data",
                     str(kaggle_dir), *extra, "--weights", "0.3", "--bonuses", "0",
                     "--json", str(tmp_path / "grid.json")]) == 0
        capsys.readouterr()
        grids.append(json.loads((tmp_path / "grid.json").read_text()))
    assert grids[1]["images"] == 2 * grids[0]["images"] > 0
    assert grids[1]["chosen"] == grids[0]["chosen"]
    assert [r["exact_match"] for r in grids[1]["rows"]] == pytest.approx([r["exact_match"] for r in grids[0]["rows"]])
    assert main(["tune-decoder", "--checkpoint", str(checkpoint), "--name-model", str(lm_path), "--data",
                 str(tmp_path / "missing.csv")]) == 2
    assert "--data" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=re.escape(f"no validation images in {kaggle_dir}, {reviewed}:")):
        main(["tune-decoder", "--checkpoint", str(checkpoint), "--name-model", str(lm_path), "--data", str(kaggle_dir),
              "--data", f"{reviewed}:{kaggle_dir / 'labelled'}", "--val-fraction", "0"])


def test_a_name_model_for_another_alphabet_is_refused(name_model):
    from htr.config import HTRConfig

    with pytest.raises(ValueError, match="alphabet"):
        CTCDecoder(HTRConfig(alphabet="ABC"), "beam", name_model=name_model)


@pytest.mark.slow
def test_served_name_model_decoding_equals_offline(tmp_path, lm_checkpoint, kaggle_dir):
    """The repository exported from a checkpoint with a name model serves exactly its offline reads."""
    import tritonclient.grpc as grpcclient

    from htr.export.repository import read_config
    from htr.testing.repository import build_cpu_repository
    from htr.testing.server import start_server

    repo = build_cpu_repository(tmp_path / "repo", lm_checkpoint, kaggle_dir, parity_images=4, progress=None)
    dec = read_config(repo / "ctc_decode")
    assert dec.parameters["decoder"].string_value == "beam"
    assert dec.parameters["lm_weight"].string_value == "1.0"
    assert (repo / "ctc_decode" / "1" / dec.parameters["name_model_file"].string_value).is_file()
    samples, _ = read_kaggle(kaggle_dir / "labels.csv")
    blobs = [s.path.read_bytes() for s in samples[:64]]
    expected = OfflineRecognizer(lm_checkpoint).predict_blobs(blobs)
    server = start_server(repo, tmp_path / "triton.log")
    try:
        client = grpcclient.InferenceServerClient(server.url_grpc)
        inp = grpcclient.InferInput("IMAGE_BYTES", [len(blobs), 1], "BYTES")
        inp.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
        res = client.infer("htr", [inp])
        texts = [t.decode() for t in res.as_numpy("TEXT").reshape(-1)]
        confs = res.as_numpy("CONFIDENCE").reshape(-1)
    finally:
        server.stop()
    assert texts == [t for t, _ in expected]
    np.testing.assert_allclose(confs, [c for _, c in expected], rtol=1e-4, atol=1e-6)


def test_a_fine_tune_keeps_its_parents_decoding(tmp_path, lm_checkpoint, tiny_kaggle):
    from htr.cli import main

    out = tmp_path / "ft"
    assert main(["train", "--init", str(lm_checkpoint), "--real", str(tiny_kaggle), "--out", str(out), "--synth", "0",
                 "--epochs", "1", "--max-steps", "1", "--batch-size", "4", "--workers", "0", "--metrics-port", "0",
                 "--no-progress"]) == 0
    for name in ("last.pt", "best.pt"):
        spec, lm = checkpoint_decoding(load_checkpoint(out / name))
        assert spec == DecodingSpec("beam", 10, 1.0, 1.0) and lm is not None
