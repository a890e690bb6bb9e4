"""``htr``: the project's command line. Each subcommand lives in its own module and registers itself.

    htr demo        run the main job end to end on the bundled defaults
    htr synth       write synthetic handwriting in the Kaggle layout
    htr train       train the CRNN (Prometheus metrics on a port)
    htr eval        score a checkpoint on a labelled folder
    htr tune-decoder  choose the beam search's name-model weight on validation, save it in the checkpoint
    htr export      export a checkpoint (TorchScript/ONNX/TensorRT), check parity, write the model repository
    htr serve       run Triton on the model repository (foreground)
    htr publish     roll a checkpoint out to the running server as its next version (--rollback: back)
    htr monitor     run Prometheus (Debian's) with the project's rules against a running htr serve
    htr recognize   read images through a running server (client)
    htr loadtest    bounded Locust load test against a local server, with a summary
    htr label       send doubtful reads to people in Label Studio (push), fetch their corrections (pull)

``htr <command> --help`` explains each one.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module defining ``add_parser(subparsers)``; modules import lazily so that
# ``htr --help`` stays fast and a subcommand's heavy dependencies load only when it runs.
COMMANDS = {
    "demo": "htr.demo",
    "synth": "htr.synth.cli",
    "train": "htr.train",
    "eval": "htr.evaluate",
    "tune-decoder": "htr.tune_decoder",
    "export": "htr.export.build_engine",
    "serve": "htr.serve.cli",
    "publish": "htr.serve.publish",
    "monitor": "htr.serve.monitor",
    "recognize": "htr.client.cli",
    "loadtest": "htr.loadtest.run",
    "label": "htr.labelling.cli",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown once: not appended where the help already states its default, nor as "None"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "(default" in text or "default:" in text:
            return text
        return super()._get_help_string(action)


_HelpFormatter = HelpFormatter


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htr", description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(see htr {name} --help)")
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # not built yet
        mod.add_parser(sub, _HelpFormatter)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(wanted)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
