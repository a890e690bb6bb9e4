"""Export a CRNN checkpoint to TorchScript, ONNX and TensorRT, check each against PyTorch, and write the
Triton model repository. The command line is ``python export/build_engine.py --help``."""
