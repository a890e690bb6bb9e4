"""CRNN, config, data loading and checkpoints (fast, CPU)."""
from __future__ import annotations

import csv

import pytest
import torch

from htr.config import DEFAULT_ALPHABET, HTRConfig, InputConfig, ModelConfig, normalize_label
from htr.data import Collate, ImageDataset, read_kaggle, split_of, split_samples
from htr.scores import score
from htr.model import CRNN, load_checkpoint, load_model, save_checkpoint

SMALL = HTRConfig(model=ModelConfig(cnn_channels=(8, 16, 16, 16, 32, 32), lstm_hidden=16))


@pytest.mark.parametrize("n,width", [(1, 256), (3, 128), (2, 400)])
def test_crnn_shapes_and_log_probs(n, width):
    model = CRNN(SMALL).eval()
    out = model(torch.rand(n, 1, SMALL.input.height, width))
    assert out.shape == (n, width // 4, SMALL.num_classes)
    assert torch.allclose(out.exp().sum(-1), torch.ones(n, width // 4), atol=1e-5)


# scripting and tracing are what this test checks; torch 2.13 deprecates both in favour of torch.export,
# which Triton's libtorch backend does not load (see export/engines.py)
@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean:torch.jit.TracerWarning")
def test_crnn_scripts_and_traces_with_dynamic_width():
    model = CRNN(SMALL).eval()
    scripted = torch.jit.script(model)
    traced = torch.jit.trace(model, torch.rand(2, 1, 32, 256))
    for n, w in ((1, 64), (5, 320)):
        x = torch.rand(n, 1, 32, w)
        assert torch.allclose(scripted(x), model(x), atol=1e-5)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        CRNN(HTRConfig(input=InputConfig(height=30)))
    with pytest.raises(ValueError, match="unique characters"):
        HTRConfig(alphabet="AAB")


def test_alphabet_round_trip_and_blank_position():
    for blank in (0, 5, len(DEFAULT_ALPHABET)):
        cfg = HTRConfig(blank=blank)
        text = "JEAN-ROCH D'ARC"
        idx = cfg.encode(text)
        assert blank not in idx and all(0 <= i < cfg.num_classes for i in idx)
        assert cfg.decode_indices(idx) == text
        assert HTRConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="not in the alphabet"):
        HTRConfig().encode("ZOË")


@pytest.mark.parametrize("raw,want", [
    ("  jean  paul ", "JEAN PAUL"), ("Éloïse", "ELOISE"), ("EMPTY", None), ("UNREADABLE", None),
    ("", None), (None, None), (float("nan"), None), ("A1", None), ("D\u2019ARC", "D'ARC"),
])
def test_normalize_label(raw, want):
    assert normalize_label(raw) == want


def test_loader_filters_a_crafted_csv(tmp_path, kaggle_dir):
    images = tmp_path / "imgs"
    images.mkdir()
    src = sorted((kaggle_dir / "labelled").glob("*.jpg"))[:8]
    for i, p in enumerate(src):
        (images / f"IMG_{i}.jpg").write_bytes(p.read_bytes())
    rows = [("IMG_0.jpg", "MARTIN"), ("IMG_1.jpg", "EMPTY"), ("IMG_2.jpg", "UNREADABLE"), ("IMG_3.jpg", ""),
            ("IMG_4.jpg", "nan"), ("IMG_5.jpg", "  léa "), ("IMG_6.jpg", "R2D2"), ("MISSING.jpg", "PAUL"),
            ("IMG_7.jpg", "jean-roch")]
    csv_path = tmp_path / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([("FILENAME", "IDENTITY"), *rows])
    samples, report = read_kaggle(csv_path, images)
    assert [(s.path.name, s.text) for s in samples] == [("IMG_0.jpg", "MARTIN"), ("IMG_5.jpg", "LEA"),
                                                       ("IMG_7.jpg", "JEAN-ROCH")]
    assert report.kept == 3 and report.changed == 2
    assert dict(report.dropped) == {"EMPTY": 1, "UNREADABLE": 1, "blank": 2, "outside alphabet": 1, "missing file": 1}
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\nx.jpg,A\n")
    with pytest.raises(ValueError, match="expected a header FILENAME,IDENTITY"):
        read_kaggle(bad, images)


def test_split_is_deterministic_and_disjoint(kaggle_dir):
    samples, _ = read_kaggle(kaggle_dir / "labels.csv")
    train, held = split_samples(samples)
    assert {s.path for s in train}.isdisjoint({s.path for s in held})
    assert 0.25 < len(held) / len(samples) < 0.42
    assert split_of("VALIDATION_0001.jpg") == split_of("/elsewhere/VALIDATION_0001.jpg")


def test_collate_uses_the_serving_preprocess(kaggle_dir):
    from htr.preprocess import decode_images, preprocess_batch

    samples, _ = read_kaggle(kaggle_dir / "labels.csv")
    items = [ImageDataset(samples[:4])[i] for i in range(4)]
    batch = Collate(HTRConfig())(items)
    want = preprocess_batch(decode_images([it[0] for it in items]), 32, 256, "otsu")
    assert torch.equal(batch["pixels"], torch.from_numpy(want))
    assert batch["target_lengths"].tolist() == [len(s.text) for s in samples[:4]]
    assert HTRConfig().decode_indices(batch["targets"][: len(samples[0].text)].tolist()) == samples[0].text


def test_checkpoint_round_trip_is_weights_only_safe(tmp_path):
    model = CRNN(SMALL).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, SMALL, step=3, val={"cer": 0.5})
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == SMALL.to_dict() and raw["step"] == 3
    loaded, cfg, ckpt = load_model(path)
    assert cfg == SMALL
    x = torch.rand(2, 1, 32, 128)
    assert torch.equal(loaded(x), model(x))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an htr CRNN checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


def test_score_matches_hand_computed():
    r = score(["MARTIN", "LEA", "JEAN PAUL", ""], ["MARTIN", "LEO", "JEAN PIERRE", "AB"])
    assert r["n"] == 4 and r["exact_match"] == 0.25
    # edits: 0 + 1 + 5 (PAUL->PIERRE) + 2 = 8 over 6+3+11+2 = 22 characters
    assert r["cer"] == pytest.approx(8 / 22)
    # words: MARTIN ok, LEA/LEO 1, JEAN PAUL/JEAN PIERRE 1, ""/AB 1 -> 3 over 5 words
    assert r["wer"] == pytest.approx(3 / 5)
    # positional: 6 + 2 + 6 ("JEAN P" + ... ) computed literally
    pos = sum(sum(a == b for a, b in zip(p, t)) for p, t in [("MARTIN", "MARTIN"), ("LEA", "LEO"), ("JEAN PAUL", "JEAN PIERRE")])
    assert r["correct_chars"] == pytest.approx(pos / 22)


def test_adapt_state_dict_keeps_the_projection_of_height_uniform_features():
    """A new input height resamples only the projection; height-uniform features project the same."""
    from htr.model import adapt_state_dict

    small = ModelConfig(cnn_channels=(8, 8, 8, 8, 8, 8), lstm_hidden=8)
    old = HTRConfig(input=InputConfig(height=32), model=small)
    torch.manual_seed(0)
    state = CRNN(old).state_dict()
    for height in (48, 64, 16):
        new = HTRConfig(input=InputConfig(height=height, width=384), model=small)
        adapted = adapt_state_dict(state, old, new)
        CRNN(new).load_state_dict(adapted)  # shapes fit the new network
        column = torch.randn(8)
        f_old = column[:, None].expand(8, 2).reshape(-1)  # channel-major, constant along height
        f_new = column[:, None].expand(8, height // 16).reshape(-1)
        torch.testing.assert_close(adapted["proj.0.weight"] @ f_new, state["proj.0.weight"] @ f_old)
        assert all(torch.equal(adapted[k], v) for k, v in state.items() if k != "proj.0.weight")
    with pytest.raises(ValueError, match="needs the new network's initial weights"):
        adapt_state_dict(state, old, HTRConfig(input=InputConfig(height=32), model=ModelConfig(cnn_channels=(8,) * 6,
                                                                                              lstm_hidden=16)))
    with pytest.raises(ValueError, match="layer counts fixed"):
        adapt_state_dict(state, old, HTRConfig(model=ModelConfig(cnn_channels=(8,) * 6, lstm_hidden=8, lstm_layers=3)))


@pytest.mark.parametrize("height", [32, 48])
def test_a_grown_network_computes_what_the_old_one_did_and_its_new_units_learn(height):
    """``htr train --init old.pt --channels ... --hidden ...``: wider CNN stages and a larger LSTM start with the
    old network's output (new units feed nothing yet), their new weights get gradients, and shrinking is refused."""
    from htr.model import adapt_state_dict

    old = HTRConfig(input=InputConfig(height=32), model=ModelConfig(cnn_channels=(8, 8, 12, 12, 16, 16), lstm_hidden=8))
    new = HTRConfig(input=InputConfig(height=height),
                    model=ModelConfig(cnn_channels=(8, 12, 12, 16, 16, 24), lstm_hidden=12))
    torch.manual_seed(0)
    small = CRNN(old)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so the test sees them carried
        for m in small.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    big = CRNN(new)
    big.load_state_dict(adapt_state_dict(small.state_dict(), old, new, big.state_dict()))
    small.eval(), big.eval()
    x = torch.rand(3, 1, 32, 96)  # height-uniform rows would be needed across heights: compare at the old one
    if height == 32:
        torch.testing.assert_close(big(x), small(x), rtol=1e-5, atol=1e-5)
    else:
        assert big(torch.rand(3, 1, height, 96)).shape == (3, 24, new.num_classes)
    big.train()
    big(torch.rand(4, 1, height, 96)).sum().backward()
    assert big.head.weight.grad[:, 8:12].abs().sum() > 0  # the new forward cells' outgoing weights learn
    assert big.rnn.weight_hh_l0.grad[:, 8:12].abs().sum() > 0
    assert big.cnn[0].weight.grad.abs().sum() > 0 and big.proj[0].weight.grad[:, 16 * (height // 16):].abs().sum() > 0
    with pytest.raises(ValueError, match="can only grow"):
        adapt_state_dict(big.state_dict(), new, HTRConfig(input=InputConfig(height=height), model=old.model),
                         small.state_dict())
