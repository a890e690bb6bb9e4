"""The review loop: doubtful reads go to people in Label Studio, their corrections come back as labels.

    htr recognize DIR --review-below 0.5 --review-out review/     # keep the reads the model doubts
    htr label push review/                                        # a Label Studio project, reads pre-filled
    htr label pull --out corrected/                               # finished annotations, Kaggle layout
    htr train --init CKPT --data corrected/labels.csv:corrected/labelled --out runs/finetune
    htr publish --checkpoint runs/finetune/best.pt                # the next version, live (htr.serve.publish)

Modules, in the order the data flows:

- :mod:`~htr.labelling.review`   the review folder (``reads.csv`` + ``images/``) and which reads go in it
- :mod:`~htr.labelling.studio`   Label Studio through ``label-studio-sdk``: project, tasks with predictions, export
- :mod:`~htr.labelling.pull`     finished annotations -> ``labels.csv`` + ``labelled/``, normalised as in training
- :mod:`~htr.labelling.folders`  output folders written whole or not at all
- :mod:`~htr.labelling.local`    a throwaway Label Studio on a free loopback port (tests, trying the loop)
- :mod:`~htr.labelling.cli`      ``htr label push`` / ``htr label pull``

Nothing here is imported by the serving path; the SDK loads only when a Label Studio is called.
"""
