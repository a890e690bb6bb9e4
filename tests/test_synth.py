"""htr.synth: synthetic crops in the Kaggle layout (fast: one generator per module, a few dozen images)."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from htr.config import DEFAULT_ALPHABET, normalize_label
from htr.synth import (
    HANDWRITING_FONTS,
    LABEL_FONT,
    REQUIREMENTS_FILE,
    SynthGenerator,
    find_fonts,
    load_names,
    write_dataset,
)

ROOT = Path(__file__).resolve().parents[1]

# Geometry of the real crops in ../shared/data/kaggle_names (measured there; kept literal here so
# that a change in htr.synth cannot move the goalposts).
REAL_WIDTHS = {284, 324, 388}
REAL_HEIGHTS = (14, 72)

NAMES = ["CAMILLE"] * 9 + ["JEAN-ROCH", "D'ORSO", "DI PASQUALE"]


@pytest.fixture(scope="module")
def gen() -> SynthGenerator:
    return SynthGenerator(names=NAMES, faker_ratio=0.3)


def _parts(label: str) -> list[str]:
    return [p for p in re.split(r"[ -]", label) if p]


def test_same_seed_same_sample_other_seed_other_sample(gen):
    a_img, a_text = gen.sample(np.random.default_rng(123))
    b_img, b_text = gen.sample(np.random.default_rng(123))
    assert a_text == b_text
    assert np.array_equal(a_img, b_img)
    others = [gen.sample(np.random.default_rng(s)) for s in range(124, 130)]
    assert any(o[0].shape != a_img.shape or not np.array_equal(o[0], a_img) for o in others)


def test_a_second_generator_with_the_same_rng_gives_the_same_image(gen):
    other = SynthGenerator(names=NAMES, faker_ratio=0.3, seed=99)  # own caches, other default seed
    for s in range(3):
        img, text = gen.sample(np.random.default_rng([7, s]))
        img2, text2 = other.sample(np.random.default_rng([7, s]))
        assert text == text2 and np.array_equal(img, img2)


def test_samples_are_uint8_bgr_crops_in_the_real_size_range_with_ink_on_white(gen):
    shapes = set()
    for s in range(60):
        img, text = gen.sample(np.random.default_rng([1, s]))
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, img.shape
        h, w = img.shape[:2]
        assert w in REAL_WIDTHS and REAL_HEIGHTS[0] <= h <= REAL_HEIGHTS[1], (h, w)
        gray = img[..., 0]
        assert np.array_equal(img[..., 1], gray) and np.array_equal(img[..., 2], gray)  # grey, like the scans
        assert np.median(gray) >= 240, "paper should be scanned white"
        assert (gray < 100).sum() >= 15, f"no dark ink in the image of {text!r}"
        shapes.add((h, w))
    assert {w for _, w in shapes} == REAL_WIDTHS  # every real layout is produced


def test_labels_are_normalised_in_the_alphabet_and_drawn_from_the_names():
    gen = SynthGenerator(names=NAMES, faker_ratio=0.0)
    labels = [gen.sample_text(np.random.default_rng([2, s])) for s in range(400)]
    labels = [normalize_label(t) for t in labels]
    assert all(t is not None and len(t) <= 18 and set(t) <= set(DEFAULT_ALPHABET) for t in labels)
    known = {p for n in NAMES for p in _parts(n)}
    assert all(set(_parts(t)) <= known for t in labels), "faker_ratio=0 must only use the names list"
    share = sum(t == "CAMILLE" for t in labels) / len(labels)
    # 9/12 of the list, less the ~5% of draws that become compounds: about 0.71
    assert 0.64 <= share <= 0.80, f"CAMILLE drawn {share:.2f} of the time"
    assert set(NAMES) <= set(labels)


def test_faker_names_are_normalised_and_vary():
    gen = SynthGenerator(names=None, faker_ratio=0.3)  # no corpus: Faker only
    assert gen.faker_ratio == 1.0
    labels = []
    for s in range(100):
        img, label = gen.sample(np.random.default_rng([3, s]))
        assert label == normalize_label(label) and set(label) <= set(DEFAULT_ALPHABET) and len(label) <= 18
        labels.append(label)
    assert len(set(labels)) > 60


def test_render_draws_accented_text_and_rejects_what_is_not_a_label(gen):
    img = gen.render("JÉRÉMY", np.random.default_rng(0))
    assert img.ndim == 3 and img.dtype == np.uint8
    for bad in ("EMPTY", "UNREADABLE", "", "R2D2"):
        with pytest.raises(ValueError):
            gen.render(bad, np.random.default_rng(0))


def test_long_names_are_squeezed_into_the_field(gen):
    # 18 letters on a 17 px pitch need 306 px; the field has 220: the writer squeezes, never overflows
    text = "ABCDEFGHIJKLMNOPQR"
    for s in range(40):
        rng = np.random.default_rng([4, s])
        writer = gen._writer(text, rng)
        sdf = np.full((44, 388), 100.0, np.float32)
        gen._write(sdf, text, writer, 80.0, 300.0, 22.0, 16.0, 17.0, rng)
        cols = np.flatnonzero((sdf < 0.5).any(axis=0))
        assert cols.size and cols.max() <= 300 + 4 and cols.min() >= 80 - 8, (s, writer.comb, cols.min(), cols.max())


def test_fonts_are_found_cover_the_alphabet_and_are_pinned():
    hand, label = find_fonts()
    assert len(hand) == len(HANDWRITING_FONTS), f"missing handwriting fonts: pip install -r {REQUIREMENTS_FILE}"
    assert label is not None and label.suffix == ".ttf"
    gen = SynthGenerator(names=NAMES, faker_ratio=0.0)
    for font in gen.fonts:
        assert font.supports(DEFAULT_ALPHABET), font.name
        assert font.glyph("\ue000") is None  # a private-use code point: the font lacks it
    pins = (ROOT / REQUIREMENTS_FILE).read_text().split()
    for slug, _ in (*HANDWRITING_FONTS, LABEL_FONT):
        assert any(re.fullmatch(rf"fontpkg-{slug}==[\w.]+", p) for p in pins), f"fontpkg-{slug} not pinned"


def test_no_fonts_is_a_clear_error():
    with pytest.raises(RuntimeError, match=re.escape(REQUIREMENTS_FILE)):
        SynthGenerator(names=NAMES, fonts=[])


def test_a_text_no_font_can_draw_is_a_clear_error():
    gen = SynthGenerator(alphabet=DEFAULT_ALPHABET + "\ue000", names=["ABC"], faker_ratio=0.0)
    with pytest.raises(ValueError, match="no installed font"):
        gen.render("A\ue000B", np.random.default_rng(0))


def test_load_names_filters_noise(tmp_path):
    corpus = tmp_path / "names.txt"
    corpus.write_text("LEA\nEMPTY\nUNREADABLE\n\n  \nlucas\nDeodati\nJÉRÉMY\nLEA\nR2D2\nNONE\nDI  PASQUALE\n"
                      + "A" * 19 + "\n", encoding="utf-8")
    assert load_names(corpus) == ["LEA", "LUCAS", "DEODATI", "JEREMY", "LEA", "DI PASQUALE"]


def test_load_names_on_the_real_corpus(kaggle_dir):
    names = load_names(kaggle_dir / "names_corpus.txt")
    assert len(names) > 80_000
    assert "EMPTY" not in names and "UNREADABLE" not in names and "" not in names
    assert all(n == normalize_label(n) and len(n) <= 18 for n in names)


def _read_layout(out: Path) -> list[tuple[str, str]]:
    with open(out / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["FILENAME", "IDENTITY"]
    return [tuple(r) for r in rows[1:]]


def test_write_dataset_layout_labels_and_images(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\nEMPTY\n", encoding="utf-8")
    summary = write_dataset(tmp_path / "a", 10, seed=5, names_path=names, progress=False)
    assert summary.count == 10 and summary.images_per_s > 0
    rows = _read_layout(tmp_path / "a")
    assert [r[0] for r in rows] == [f"SYNTH_{i:06d}.jpg" for i in range(1, 11)]
    assert sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) == [r[0] for r in rows]
    ref = SynthGenerator(names=NAMES, faker_ratio=0.3)
    for i, (name, label) in enumerate(rows, start=1):
        img = cv2.imread(str(tmp_path / "a" / "images" / name))
        assert img is not None and img.dtype == np.uint8 and img.shape[2] == 3
        want_img, want_label = ref.sample(np.random.default_rng([5, i]))  # image i depends on (seed, i) only
        assert label == want_label
        assert img.shape == want_img.shape
        assert np.abs(img.astype(int) - want_img.astype(int)).mean() < 2.0  # same picture, JPEG aside


def test_write_dataset_is_the_same_for_any_number_of_workers(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES), encoding="utf-8")
    write_dataset(tmp_path / "one", 6, seed=1, names_path=names, workers=1, progress=False)
    write_dataset(tmp_path / "two", 6, seed=1, names_path=names, workers=2, progress=False)
    assert _read_layout(tmp_path / "one") == _read_layout(tmp_path / "two")
    for name, _ in _read_layout(tmp_path / "one"):
        assert (tmp_path / "one" / "images" / name).read_bytes() == (tmp_path / "two" / "images" / name).read_bytes()


def test_missing_default_corpus_falls_back_to_faker(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HTR_DATA", str(tmp_path / "nowhere"))
    write_dataset(tmp_path / "out", 3, progress=False)
    assert "names corpus not found" in capsys.readouterr().err
    assert len(_read_layout(tmp_path / "out")) == 3
    with pytest.raises(FileNotFoundError):  # an explicit path that is missing is an error, not a fallback
        write_dataset(tmp_path / "out2", 3, names_path=tmp_path / "missing.txt", progress=False)


def test_cli_end_to_end(tmp_path, capsys):
    from htr.cli import main

    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES), encoding="utf-8")
    out = tmp_path / "synth"
    rc = main(["synth", "--out", str(out), "--count", "4", "--seed", "3", "--names", str(names),
               "--faker-ratio", "0", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wrote 4 images" in printed and str(out) in printed and "images/s" in printed
    rows = _read_layout(out)
    assert len(rows) == 4 and all(set(_parts(label)) <= {p for n in NAMES for p in _parts(n)} for _, label in rows)
    assert all(cv2.imread(str(out / "images" / name)) is not None for name, _ in rows)


def test_cli_reports_a_missing_corpus_without_a_traceback(tmp_path, capsys):
    from htr.cli import main

    rc = main(["synth", "--out", str(tmp_path / "o"), "--count", "2", "--names", str(tmp_path / "missing.txt")])
    assert rc == 2
    assert "names corpus not found" in capsys.readouterr().err


def test_blank_fields_have_form_print_but_no_label():
    g = SynthGenerator(blank_ratio=1.0, seed=0)
    rng = np.random.default_rng(7)
    for _ in range(5):
        image, label = g.sample(rng)
        assert label == ""
        assert image.dtype == np.uint8 and image.ndim == 3 and 20 <= image.shape[0] <= 60
    mixed = SynthGenerator(blank_ratio=0.5, seed=0)
    labels = [mixed.sample(np.random.default_rng([1, i]))[1] for i in range(40)]
    assert 5 <= labels.count("") <= 35 and any(labels)
    with pytest.raises(ValueError, match="blank_ratio"):
        SynthGenerator(blank_ratio=1.5)
