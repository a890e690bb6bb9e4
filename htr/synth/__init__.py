"""Synthetic handwritten names that look like the Kaggle form-field scans, in the Kaggle layout.

The real crops (``../shared/data/kaggle_names``) were measured before any number here was chosen:

* They are cut from a few fixed form layouts, so widths are exactly 284, 324 or 388 px and
  heights cluster per layout (324x44; 284x31; 388x36; 388x14-35; 284x45-50; 284x62-72).
  :data:`TEMPLATES` reproduces each layout with its share of the real images.
* Paper is scanned white (the median pixel is 255 in every image); the files are grey content in
  RGB JPEGs (chroma exactly 0) at quality about 94. Ink is dark (10th percentile of ink pixels:
  median 17) and thin: 2 * area / perimeter of the ink, a stroke-width estimate, is 1.1-2.0 px.
* People wrote block capitals into comb boxes that the scanner dropped out, so letters sit on a
  regular pitch of 13-17 px with wide gaps, cap height 11-20 px; many write ``I`` as a dotted
  ``i``, some add accents the label does not have (JÉRÉMY labelled JEREMY).
* Printed field labels are Arial-like: bold ``NOM :`` / ``PRENOM :`` at the left of the 388 px
  layouts, regular ``NOM`` / ``PRENOM`` above the handwriting in the 284 px ones, and text of the
  neighbouring fields (``CODE RNE / UAI``, ``NÉ(E) LE``, ``DATE DE NAISSANCE  CLASSE``) cut by the
  crop at the top or bottom edge. Box rules are rare (the boxes were dropped out), so they are rare here.

The package, in the order the data flows:

* :mod:`~htr.synth.names`: what is written (the names corpus, Faker ``fr_FR`` names);
* :mod:`~htr.synth.fonts`: the handwriting and printed-label fonts, cached as glyph SDFs and masks;
* :mod:`~htr.synth.layouts`: the form layouts a crop is cut from (:data:`TEMPLATES`);
* :mod:`~htr.synth.generator`: :class:`SynthGenerator`, which writes a name into a layout, glyph by
  glyph from the fonts' SDFs, and gives it the scan's paper, ink and JPEG;
* :mod:`~htr.synth.dataset`: :func:`write_dataset`, many crops on disk in the Kaggle layout, in processes;
* :mod:`~htr.synth.cli`: the ``htr synth`` command, a thin shell over :func:`write_dataset`.

    from htr.synth import SynthGenerator, load_names
    gen = SynthGenerator(names=load_names("names_corpus.txt"))
    image, text = gen.sample(np.random.default_rng(0))   # (H, W, 3) uint8 BGR, "CAMILLE"
"""
from htr.synth.dataset import CSV_HEADER, FILENAME_FORMAT, SynthSummary, write_dataset
from htr.synth.fonts import HANDWRITING_FONTS, LABEL_FONT, REQUIREMENTS_FILE, find_fonts
from htr.synth.generator import SynthGenerator
from htr.synth.layouts import HEIGHT_RANGE, TEMPLATES, WIDTHS
from htr.synth.names import MAX_LEN, default_names_path, load_names

__all__ = [
    "CSV_HEADER",
    "FILENAME_FORMAT",
    "HANDWRITING_FONTS",
    "HEIGHT_RANGE",
    "LABEL_FONT",
    "MAX_LEN",
    "REQUIREMENTS_FILE",
    "SynthGenerator",
    "SynthSummary",
    "TEMPLATES",
    "WIDTHS",
    "default_names_path",
    "find_fonts",
    "load_names",
    "write_dataset",
]
