"""htr-triton: handwriting recognition (CRNN + CTC) served by NVIDIA Triton."""
__version__ = "0.1.0"
