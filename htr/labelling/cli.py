"""``htr label``: send doubtful reads to people in Label Studio, and bring their corrections back as labels.

    htr recognize scans/ --review-below 0.5 --review-out review/      # 1. keep what the model doubts
    htr label push review/ --project "htr review"                     # 2. tasks, the model's reads pre-filled
    htr label pull --out corrected/ --project "htr review"            # 3. Kaggle layout: labels.csv + labelled/
    htr train --init CKPT --data corrected/labels.csv:corrected/labelled --out runs/finetune   # 4. (pull prints it)

The Label Studio URL and API token come from --url/--token, else $LABEL_STUDIO_URL/$LABEL_STUDIO_API_KEY
(Label Studio: Account & Settings; a legacy token or a personal access token). ``push`` makes the project
when it is missing (an image + one editable line of text), imports one task per read with the read as a
prediction (score = confidence) and never imports an image twice: pushing the same folder again adds nothing.
``pull`` writes each task's newest finished annotation, normalised as the training labels are, and reports
the tasks it skips (not annotated yet, skipped, empty, characters outside the alphabet) with their counts.

Exit status: 0 done; 1 Label Studio unreachable, token refused, no such project, or nothing to pull (an empty
project, or no task with a usable annotation: nothing is written then); 2 bad arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# light imports only: `htr --help` imports this module (the SDK loads when a command runs)
from htr.config import DEFAULT_ALPHABET

from .studio import DEFAULT_PROJECT, DEFAULT_URL, TOKEN_ENV, URL_ENV


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("label", help="send doubtful reads to Label Studio (push) and fetch the corrections (pull)",
                       description=__doc__, formatter_class=formatter_class)
    commands = p.add_subparsers(dest="label_command", metavar="{push,pull}")

    def common(q):
        q.add_argument("--url", default=None, help=f"Label Studio URL (default: ${URL_ENV}, else {DEFAULT_URL})")
        q.add_argument("--token", default=None, help=f"API token (default: ${TOKEN_ENV})")
        q.add_argument("--project", default=DEFAULT_PROJECT, help="project title")
        q.add_argument("--timeout", type=float, default=30.0, help="seconds per request to Label Studio")

    push = commands.add_parser("push", help="create/update the project and import the review folder's reads",
                               description="Import a review folder (htr recognize --review-out) into a Label "
                                           "Studio project, the model's reads as pre-annotations.",
                               formatter_class=formatter_class)
    push.add_argument("folder", type=Path, metavar="DIR", help="review folder: reads.csv + images/")
    common(push)
    push.add_argument("--model-version", default=None,
                      help="the predictions' model_version (default: the one review.json records)")
    push.set_defaults(func=run_push)

    pull = commands.add_parser("pull", help="export finished annotations into the Kaggle layout",
                               description="Write the project's finished annotations as labels.csv "
                                           "(FILENAME,IDENTITY) + labelled/, normalised as in training.",
                               formatter_class=formatter_class)
    pull.add_argument("--out", type=Path, required=True, metavar="DIR",
                      help="output folder (replaced when it holds an earlier pull; written whole or not at all)")
    common(pull)
    pull.add_argument("--alphabet", default=DEFAULT_ALPHABET, help="characters a label may hold")
    pull.set_defaults(func=run_pull)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _say(msg: str) -> None:
    print(f"htr label: {msg}", file=sys.stderr, flush=True)


def run_push(args) -> int:
    from .errors import LabellingError
    from .studio import Studio, push

    try:
        studio = Studio(args.url, args.token, timeout_s=args.timeout)
        r = push(studio, args.folder, project=args.project, model_version=args.model_version)
    except LabellingError as e:
        _say(f"error: {e}")
        return 1
    _say(f"{'created' if r.created else 'updated'} project {args.project!r} ({r.project_url}): {r.added} task(s) "
         f"added, {r.already} already there; predictions as model_version {r.model_version!r}")
    return 0


def run_pull(args) -> int:
    from .errors import LabellingError
    from .pull import LABELLED, LABELS_CSV, pull
    from .studio import Studio

    try:
        studio = Studio(args.url, args.token, timeout_s=args.timeout)
        r = pull(studio, args.out, project=args.project, alphabet=args.alphabet)
    except LabellingError as e:
        _say(f"error: {e}")
        return 1
    for line in r.report():
        _say(line)
    _say(f"wrote {len(r.labels)} label(s) of {r.tasks} task(s) to {r.out}/{LABELS_CSV} + {LABELLED}/")
    _say(f"next: {finetune_command(r.out)}")
    return 0


def finetune_command(out: Path) -> str:
    """The fine-tune that trains on every pulled label. ``--data`` adds a folder to the training side whole;
    ``--real`` would hash-split it like the Kaggle folder (about a third held out for scoring, a quarter of the
    rest for validation), so half of the corrections would never be trained on. The Kaggle folder stays the
    ``--real`` one (its default): its train side keeps the model from forgetting, its validation part chooses
    the best epoch, and its eval split stays held out for ``htr eval``."""
    from .pull import LABELLED, LABELS_CSV

    return (f"htr train --init CHECKPOINT --data {out}/{LABELS_CSV}:{out}/{LABELLED} --out runs/finetune "
            f"(not --real {out}: that would hold about half of the labels out of training)")
