"""Training: overfit one batch, CLI smoke runs, resume equality, metrics endpoint, eval CLI."""
from __future__ import annotations

import csv
import json
import socket
import urllib.request
from pathlib import Path

import pytest
import torch

from htr.cli import main as cli
from htr.config import HTRConfig, ModelConfig
from htr.data import Collate, ImageDataset, read_kaggle
from htr.scores import score
from htr.model import CRNN, load_checkpoint
from htr.preprocess import ctc_greedy_decode
from htr.train import ctc_loss

TINY = ["--channels", "8,16,16,16,32,32", "--hidden", "16"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_overfit_one_batch(kaggle_dir):
    """4 real images, a small CRNN, <= 450 steps: CTC loss below 0.5 and greedy decoding mostly right."""
    torch.manual_seed(0)
    cfg = HTRConfig(model=ModelConfig(cnn_channels=(16, 32, 48, 48, 64, 64), lstm_hidden=64, dropout=0.0))
    samples, _ = read_kaggle(kaggle_dir / "labels.csv")
    batch = Collate(cfg)([ImageDataset(samples[:4])[i] for i in range(4)])
    model = CRNN(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(450):
        loss = ctc_loss(model(batch["pixels"]), batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if loss.item() < 0.05:
            break
    with torch.no_grad():  # train-mode BatchNorm: the memorised batch is the one being scored
        logprobs = model(batch["pixels"])
        final = ctc_loss(logprobs, batch).item()
    texts = [t for t, _ in ctc_greedy_decode(logprobs.numpy(), cfg.alphabet)]
    assert first > 10 and final < 0.5, f"loss went {first:.2f} -> {final:.3f}, not below 0.5 on one batch"
    assert score(texts, batch["texts"])["cer"] < 0.25, texts  # an untrained model reads nothing (CER 1.0)


@pytest.mark.slow
def test_train_resume_equals_straight_run(tmp_path, tiny_kaggle):
    common = ["train", "--real", str(tiny_kaggle), "--synth", "0", "--real-repeat", "1", "--augment", "0",
              "--batch-size", "8", "--workers", "0", "--metrics-port", "0", "--no-progress", "--seed", "3", *TINY]
    assert cli([*common, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    assert cli([*common, "--epochs", "2", "--max-steps", "4", "--out", str(tmp_path / "split")]) == 0
    first = load_checkpoint(tmp_path / "split" / "last.pt")
    assert first["epoch"] == 1 and first["step"] == 4
    assert cli([*common, "--epochs", "2", "--resume", "--out", str(tmp_path / "split")]) == 0
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 8  # 32 of the 60 rows train (the rest: validation, eval), batch 8
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    history = [json.loads(line) for line in (tmp_path / "split" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.slow
def test_train_serves_prometheus_metrics(tmp_path, tiny_kaggle, monkeypatch):
    """The exporter answers while training runs: scrape it from inside the loop."""
    import htr.train as train_mod

    port = free_port()
    scraped = {}
    real_save = train_mod.save_checkpoint

    def scrape_then_save(*args, **kwargs):  # runs after the epoch's validation metrics are set
        scraped["text"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return real_save(*args, **kwargs)

    monkeypatch.setattr(train_mod, "save_checkpoint", scrape_then_save)
    assert cli(["train", "--real", str(tiny_kaggle), "--synth", "0", "--real-repeat", "1", "--epochs", "1",
                "--batch-size", "8", "--workers", "0", "--metrics-port", str(port), "--no-progress",
                "--out", str(tmp_path / "m"), *TINY]) == 0
    text = scraped["text"]
    for name in ("htr_train_loss", "htr_train_learning_rate", "htr_train_samples_per_second", "htr_train_epoch",
                 "htr_train_step", "htr_train_samples_total", "htr_train_memory_bytes", "process_resident_memory_bytes"):
        assert f"\n{name}" in text, name
    assert 'htr_train_epoch 1.0' in text
    # every training metric the Grafana training dashboard queries is exported
    import re
    from pathlib import Path

    dashboard = (Path(__file__).resolve().parents[1] / "monitoring/grafana/dashboards/training.json").read_text()
    wanted = set(re.findall(r"htr_train_[a-z_]+", dashboard))
    assert wanted and all(f"\n{name}" in text for name in wanted), wanted - {n for n in wanted if f"\n{n}" in text}


@pytest.mark.slow
def test_eval_cli_prints_json(tmp_path, tiny_kaggle, capsys):
    assert cli(["train", "--real", str(tiny_kaggle), "--synth", "0", "--real-repeat", "1", "--epochs", "1",
                "--max-steps", "3", "--batch-size", "8", "--workers", "0", "--metrics-port", "0", "--no-progress",
                "--out", str(tmp_path / "e"), *TINY]) == 0
    capsys.readouterr()
    preds = tmp_path / "preds.csv"
    assert cli(["eval", "--checkpoint", str(tmp_path / "e" / "best.pt"), "--labels", str(tiny_kaggle / "labels.csv"),
                "--json", "--predictions", str(preds)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 60
    for key in ("exact_match", "cer", "wer", "correct_chars"):
        assert 0.0 <= result[key] <= 1.0 or key in ("cer", "wer")
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 60 and set(rows[0]) == {"FILENAME", "IDENTITY", "PREDICTION", "CONFIDENCE"}
    assert cli(["eval", "--checkpoint", str(tmp_path / "e" / "best.pt"), "--labels", str(tiny_kaggle / "labels.csv"),
                "--split", "eval", "--decoder", "beam", "--lexicon", str(tiny_kaggle / "names_corpus.txt"), "--json"]) == 0
    beam = json.loads(capsys.readouterr().out)
    assert 0 < beam["n"] < 60 and beam["decoder"].startswith("beam 10 + hard lexicon")
    assert cli(["eval", "--checkpoint", str(tmp_path / "e" / "best.pt"), "--labels", str(tiny_kaggle / "labels.csv"),
                "--by-confidence", "0,0.5,1.01", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["by_confidence"]
    assert [r["threshold"] for r in table] == [0.0, 0.5, 1.01]
    assert table[0]["n_kept"] == 60 and table[-1]["n_kept"] == 0 and table[-1]["exact_match"] is None
    assert cli(["eval", "--checkpoint", str(tmp_path / "e" / "best.pt"), "--labels", str(tiny_kaggle / "labels.csv"),
                "--by-confidence", "high"]) == 2
    assert "--by-confidence wants comma-separated numbers" in capsys.readouterr().err


def test_by_confidence_counts_kept_reads_and_their_accuracy():
    from htr.scores import by_confidence

    preds, confs = ["ANNA", "LEO", "MAX", "JO"], [0.95, 0.6, 0.2, 0.05]
    labels = ["ANNA", "LEA", "MAX", "JO"]
    rows = by_confidence(preds, confs, labels, thresholds=(0.5, 0.0, 0.9, 0.99))
    assert [(r["threshold"], r["n_kept"], r["exact_match"]) for r in rows] == [
        (0.0, 4, 0.75), (0.5, 2, 0.5), (0.9, 1, 1.0), (0.99, 0, None)]
    assert rows[1]["kept"] == 0.5
    with pytest.raises(ValueError, match="3 confidences"):
        by_confidence(preds, confs[:3], labels)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    from htr.train import lr_factor

    assert lr_factor(0.0, 0.1) == pytest.approx(1e-3) and lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0)
    values = [lr_factor(p / 100, 0.1) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone after warm-up
    assert lr_factor(1.0, 0.1) == pytest.approx(0.02) and lr_factor(1.5, 0.1) == pytest.approx(0.02)


@pytest.mark.slow
def test_init_at_a_new_input_size_first_pseudo_labels_with_the_init_model(tmp_path, tiny_kaggle, scans,
                                                                           monkeypatch):
    import htr.train as train_mod

    common = ["train", "--real", str(tiny_kaggle), "--synth", "0", "--real-repeat", "1", "--epochs", "1",
              "--max-steps", "2", "--batch-size", "8", "--workers", "0", "--metrics-port", "0", "--no-progress"]
    assert cli([*common, "--out", str(tmp_path / "a"), *TINY]) == 0
    labelled_at = []
    real_pseudo_label = train_mod.pseudo_label

    def spy(model, cfg, *args, **kwargs):
        labelled_at.append((cfg.input.height, cfg.input.width))
        return real_pseudo_label(model, cfg, *args, **kwargs)

    monkeypatch.setattr(train_mod, "pseudo_label", spy)
    assert cli([*common, "--epochs", "2", "--max-steps", "100", "--pseudo-every", "1", "--pseudo",
                str(scans), "--pseudo-threshold", "0", "--init", str(tmp_path / "a" / "last.pt"),
                "--height", "48", "--width", "320", "--out", str(tmp_path / "b")]) == 0
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["config"]["input"]["height"] == 48 and ckpt["config"]["input"]["width"] == 320
    assert ckpt["config"]["model"] == load_checkpoint(tmp_path / "a" / "last.pt")["config"]["model"]
    # epoch 1 is labelled by the --init model at its own size, epoch 2 by the model being trained
    assert labelled_at == [(32, 256), (48, 320)]


def test_pseudo_labelling_stops_between_batches(tmp_path, tiny_kaggle):
    """A signal during the (long) pseudo-labelling pass is honoured at the next batch, not after all of it."""
    from htr.train import pseudo_label

    cfg = HTRConfig(model=ModelConfig(cnn_channels=(8, 16, 16, 16, 32, 32), lstm_hidden=16))
    model = CRNN(cfg)
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) > 2

    pseudo_label(model, cfg, tiny_kaggle / "labelled", None, 0.0, torch.device("cpu"), batch_size=8,
                 progress=False, stop=stop_after_two)
    assert len(calls) == 3  # 60 images = 8 batches of 8; it looked 3 times and stopped before batch 3
    assert model.training


def test_metrics_port_in_use_is_a_clear_error(tmp_path, tiny_kaggle):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(SystemExit, match=rf"cannot serve training metrics on 127.0.0.1:{port}.*--metrics-port"):
            cli(["train", "--real", str(tiny_kaggle), "--synth", "0", "--epochs", "1", "--max-steps", "1",
                 "--workers", "0", "--metrics-port", str(port), "--no-progress", "--out", str(tmp_path / "p"), *TINY])


def test_empty_rows_train_as_empty_text_and_the_validation_part_is_on_the_train_side(tmp_path, kaggle_dir):
    from htr.data import read_kaggle, split_samples, split_train_val

    csv_path = tmp_path / "labels.csv"
    rows = ["FILENAME,IDENTITY", "a.jpg,EMPTY", "b.jpg,UNREADABLE", "c.jpg,Émile", "d.jpg,"]
    csv_path.write_text("\n".join(rows) + "\n")
    samples, report = read_kaggle(csv_path, check_files=False, keep_empty=True)
    assert [(s.path.name, s.text) for s in samples] == [("a.jpg", ""), ("c.jpg", "EMILE")]
    assert report.empty == 1 and "1 EMPTY as empty text" in str(report)
    assert dict(report.dropped) == {"UNREADABLE": 1, "blank": 1}
    samples, _ = read_kaggle(csv_path, check_files=False)  # scoring: EMPTY rows stay out by default
    assert [s.text for s in samples] == ["EMILE"]
    real, _ = read_kaggle(kaggle_dir / "labels.csv", keep_empty=True)
    train, held = split_samples(real)
    rest, val = split_train_val(train)
    assert {s.path for s in rest} | {s.path for s in val} == {s.path for s in train}
    assert not {s.path for s in val} & ({s.path for s in rest} | {s.path for s in held})
    assert 0.18 < len(val) / len(train) < 0.32


def test_pseudo_labels_with_the_name_model_are_open_vocabulary(tmp_path, tiny_kaggle, checkpoint):
    """``--pseudo-decoder names``: the teacher's reads need not be lexicon entries (the hard lexicon forces every
    read into one); without a name model file the run stops with a clear error."""
    from htr.model import load_model
    from htr.preprocess import NameModel
    from htr.train import pseudo_label

    model, cfg, _ = load_model(checkpoint)
    lexicon = ["MARTIN", "LEA"]
    names = NameModel.train(["MARTIN", "LEA", "THOMAS", "CAMILLE"], cfg.alphabet, order=3)
    hard = pseudo_label(model, cfg, tiny_kaggle / "labelled", lexicon, 0.0, torch.device("cpu"), progress=False)
    soft = pseudo_label(model, cfg, tiny_kaggle / "labelled", lexicon, 0.0, torch.device("cpu"), progress=False,
                        decoder_options={"name_model": names, "lm_weight": 0.3, "lexicon_mode": "soft"})
    assert {s.text for s in hard} <= set(lexicon)
    assert len({s.text for s in soft} - set(lexicon)) > 10
    half = pseudo_label(model, cfg, tiny_kaggle / "labelled", lexicon, 0.0, torch.device("cpu"), progress=False,
                        decoder_options={"name_model": names, "lm_weight": 0.3, "lexicon_mode": "soft"}, keep=0.5)
    assert len(half) == round(len(soft) / 2) and {(s.path, s.text) for s in half} <= {(s.path, s.text) for s in soft}
    with pytest.raises(SystemExit, match="--pseudo-decoder names needs a name model"):
        cli(["train", "--real", str(tiny_kaggle), "--out", str(tmp_path / "r"), "--pseudo", str(tiny_kaggle / "labelled"),
             "--pseudo-decoder", "names", "--metrics-port", "0", *TINY])


def test_names_teacher_reads_as_the_init_checkpoint_is_served(tmp_path, checkpoint):
    """``--pseudo-decoder names`` without flags takes the name model and weights the ``--init`` checkpoint
    carries (``htr tune-decoder``); flags override them; a checkpoint without any needs ``--name-model``."""
    import argparse

    from htr.ctc_decoder import DecodingSpec, name_model_bytes
    from htr.model import load_model
    from htr.preprocess import NameModel
    from htr.train import _names_teacher

    _, cfg, _ = load_model(checkpoint)
    names = NameModel.train(["MARTIN", "LEA", "THOMAS"], cfg.alphabet, order=3)
    tuned = {"decoding": {**DecodingSpec("beam", 10, 0.3, 0.25).to_params(), "name_model_npz": name_model_bytes(names)}}
    flags = lambda **kw: argparse.Namespace(**{"name_model": None, "pseudo_lm_weight": None,
                                               "pseudo_insertion_bonus": None, **kw})
    got = _names_teacher(flags(), tuned)
    assert (got["lm_weight"], got["insertion_bonus"]) == (0.3, 0.25)
    assert got["name_model"].alphabet == cfg.alphabet and got["name_model"].order == 3
    got = _names_teacher(flags(pseudo_lm_weight=0.7, pseudo_insertion_bonus=0.0), tuned)
    assert (got["lm_weight"], got["insertion_bonus"]) == (0.7, 0.0)
    npz = tmp_path / "lm.npz"
    names.save(npz)
    got = _names_teacher(flags(name_model=npz), {})
    assert (got["lm_weight"], got["insertion_bonus"]) == (0.5, 0.0)
    with pytest.raises(SystemExit, match="needs a name model"):
        _names_teacher(flags(), {"decoding": DecodingSpec().to_params()})
    with pytest.raises(SystemExit, match="no such file"):
        _names_teacher(flags(name_model=tmp_path / "missing.npz"), tuned)


def test_real_source_takes_a_folder_or_a_csv_with_its_images(tmp_path, tiny_kaggle):
    from htr.data import real_source

    assert real_source(tiny_kaggle) == (tiny_kaggle / "labels.csv", None)
    csv_path = tmp_path / "reviewed.csv"
    csv_path.write_text((tiny_kaggle / "labels.csv").read_text())
    assert real_source(f"{csv_path}:{tiny_kaggle / 'labelled'}") == (csv_path, tiny_kaggle / "labelled")
    assert real_source(csv_path) == (csv_path, None)
    with pytest.raises(FileNotFoundError, match="without labels.csv"):
        real_source(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        real_source(tmp_path / "missing.csv")


@pytest.mark.slow
def test_train_takes_reviewed_labels_whose_images_lie_elsewhere(tmp_path, tiny_kaggle, capsys):
    """``--real CSV:IMAGES`` (labels people gave to scans of another folder) is split and trained on like a
    Kaggle-layout folder; a missing source is a clear error before any work."""
    csv_path = tmp_path / "reviewed.csv"
    csv_path.write_text((tiny_kaggle / "labels.csv").read_text())
    common = ["train", "--synth", "0", "--real-repeat", "1", "--epochs", "1", "--max-steps", "1", "--batch-size", "8",
              "--workers", "0", "--metrics-port", "0", "--no-progress", *TINY]
    assert cli([*common, "--real", str(tiny_kaggle), "--real", f"{csv_path}:{tiny_kaggle / 'labelled'}",
                "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    folder_line = next(l for l in out.splitlines() if l.startswith(str(tiny_kaggle / "labels.csv")))
    csv_line = next(l for l in out.splitlines() if l.startswith(str(csv_path)))
    assert folder_line.split(": ", 1)[1] == csv_line.split(": ", 1)[1]  # the same rows, the same split
    assert json.loads(load_checkpoint(tmp_path / "r" / "last.pt")["args"])["real"][1].endswith(":" + str(tiny_kaggle / "labelled"))
    with pytest.raises(SystemExit, match="--real .*missing.csv"):
        cli([*common, "--real", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m")])


@pytest.mark.slow
def test_images_with_a_real_label_are_not_pseudo_labelled(tmp_path, tiny_kaggle, kaggle_dir, checkpoint, capsys):
    """A --pseudo folder that holds reviewed scans (labelled through --real CSV:IMAGES) reads only the others:
    the people's label wins, and the validation / eval parts of a real source never come back as pseudo-labels."""
    pseudo = tmp_path / "scans"
    pseudo.mkdir()
    labelled = sorted((tiny_kaggle / "labelled").glob("*.jpg"))[:6]
    unlabelled = sorted((kaggle_dir / "unlabelled").glob("*.jpg"))[:6]
    for p in labelled + unlabelled:
        (pseudo / p.name).symlink_to(p)
    assert cli(["train", "--init", str(checkpoint), "--real", str(tiny_kaggle), "--pseudo", str(pseudo),
                "--pseudo-decoder", "names", "--pseudo-threshold", "0", "--pseudo-every", "1", "--synth", "0",
                "--real-repeat", "1", "--epochs", "1", "--max-steps", "1", "--batch-size", "8", "--workers", "0",
                "--metrics-port", "0", "--no-progress", "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert f"pseudo-labelling skips the 6 images of {pseudo} that have a real label" in out
    read = {Path(p).name for p, _ in load_checkpoint(tmp_path / "p" / "last.pt")["pseudo"]}
    assert read and read <= {p.name for p in unlabelled}, read  # the shipped model reads most of these six
