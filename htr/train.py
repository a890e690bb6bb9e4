"""``htr train``: train the CRNN with CTC on real, synthetic and pseudo-labelled handwriting.

Example (CPU, the shared folder's training split + synthetic names rendered on the fly)::

    htr train --out runs/names --real ../shared/data/kaggle_names --synth 4000 --epochs 30

Real images from a Kaggle-layout folder are split by a hash of the file name (``htr.data.split_of``):
the ``eval`` side is never trained on and never used to choose anything (score it afterwards with
``htr eval --split eval``). Early stopping and the best epoch are chosen on a validation part of the
*train* side (``--val-fraction``, a second hash, ``htr.data.split_train_val``). Rows labelled ``EMPTY``
train as empty text, and ``--empty-ratio`` of the synthetic samples are blank fields, so a blank form field
reads as "". More
labelled data (e.g. the full Kaggle train CSV) comes in with ``--data CSV[:IMAGES]``. With
``--pseudo DIR`` the current model reads unlabelled images with a lexicon-constrained beam search
and the confident ones join the training set.

Everything a resumed run needs is in ``OUT/last.pt``; ``OUT/best.pt`` holds the best validation CER.
Speed: on a CPU with BF16 support (AVX-512 BF16 / AMX) the forward pass runs under BF16 autocast
(``--amp auto``), CUDA uses FP16 autocast with a gradient scaler; the CNN runs channels-last. The loss,
the optimiser and the saved weights stay FP32. ``bench/train_bench.py`` measures both against FP32.

Prometheus metrics (loss, CER, exact match, learning rate, samples/s, epoch, memory) are served on
``--metrics-port`` (loopback) while training runs.

On several processes: ``torchrun --nproc_per_node N -m htr.cli train ...`` (see htr.distributed): the same
flags, ``--batch-size`` and ``--lr`` stay global, rank 0 writes the checkpoints and serves the metrics.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import distributed
from .config import HTRConfig, InputConfig, ModelConfig
from .data import (Collate, ImageDataset, Sample, SynthDataset, build_augment, read_kaggle, real_source,
                   split_samples, split_train_val)
from .scores import score
from .model import CRNN, adapt_state_dict, check_adaptable, count_parameters, load_checkpoint, save_checkpoint
from .preprocess import ctc_greedy_decode

from .paths import default_data_dir
from .training_exporter import TrainingExporter


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("train", help="train the CRNN (CTC), metrics for Prometheus", description=__doc__,
                       formatter_class=formatter_class)
    g = p.add_argument_group("data")
    g.add_argument("--real", action="append", default=None, metavar="DIR|CSV[:IMAGES]",
                   help=f"labelled real images, hash-split train/validation/eval: a Kaggle-layout folder (labels.csv "
                        f"+ labelled/) or a CSV with its image folder; repeatable "
                        f"(default: $HTR_DATA, else {default_data_dir()})")
    g.add_argument("--data", action="append", default=[], metavar="CSV[:IMAGES]",
                   help="extra labelled CSV (all rows used for training); repeatable")
    g.add_argument("--real-repeat", type=int, default=4, help="times each real training image is seen per epoch")
    g.add_argument("--synth", type=int, default=4000, help="synthetic samples rendered per epoch (0: none)")
    g.add_argument("--names", type=Path, default=None, help="names corpus for synthetic text (default: beside --real)")
    g.add_argument("--pseudo", type=Path, default=None, help="folder of unlabelled images to pseudo-label")
    g.add_argument("--pseudo-threshold", type=float, default=0.9, help="keep pseudo-labels at least this confident")
    g.add_argument("--pseudo-every", type=int, default=5, help="re-label every N epochs (and at start with --init)")
    g.add_argument("--pseudo-weight", type=float, default=1.0, help="loss weight of pseudo-labelled samples")
    g.add_argument("--lexicon", type=Path, default=None, help="lexicon for pseudo-labelling (default: --names)")
    g.add_argument("--pseudo-decoder", choices=["lexicon", "names"], default="lexicon",
                   help="how the teacher reads unlabelled images: lexicon = beam search constrained to --lexicon "
                        "(every pseudo-label a known name); names = beam search with a name model (open "
                        "vocabulary; an explicit --lexicon adds a soft bonus). bench/pseudo_label_bench.py "
                        "compares them")
    g.add_argument("--name-model", type=Path, default=None,
                   help="name model (.npz, python -m htr.name_model) for --pseudo-decoder names (default: the one "
                        "the --init checkpoint is served with, from htr tune-decoder)")
    g.add_argument("--pseudo-lm-weight", type=float, default=None,
                   help="name-model weight when pseudo-labelling (default: the --init checkpoint's tuned weight, "
                        "else 0.5)")
    g.add_argument("--pseudo-insertion-bonus", type=float, default=None,
                   help="per-character bonus when pseudo-labelling with the name model (default: the --init "
                        "checkpoint's tuned bonus, else 0)")
    g.add_argument("--pseudo-keep", type=float, default=1.0,
                   help="keep only this share of the reads above --pseudo-threshold, most confident first "
                        "(bench/pseudo_label_bench.py: precision at each share kept)")
    g.add_argument("--augment", type=float, default=1.0, help="augmentation strength (0: off)")
    g.add_argument("--eval-fraction", type=float, default=1 / 3,
                   help="share of real images held out for scoring (hash split; never trained on or selected with)")
    g.add_argument("--val-fraction", type=float, default=0.25,
                   help="share of the train side kept for validation (early stopping, best epoch)")
    g.add_argument("--empty-ratio", type=float, default=0.03,
                   help="share of synthetic samples rendered as blank fields (label: empty text)")
    g = p.add_argument_group("model")
    g.add_argument("--height", type=int, default=None,
                   help=f"input height, a multiple of 16 (default {InputConfig.height}; with --init the checkpoint's, "
                        "and a new height resamples its projection weights)")
    g.add_argument("--width", type=int, default=None,
                   help=f"input width (default {InputConfig.width}; with --init the checkpoint's, or a new one)")
    g.add_argument("--channels", default=None,
                   help=f"6 CNN widths (default {','.join(map(str, ModelConfig.cnn_channels))}; with --init the "
                        "checkpoint's, and wider ones grow it without changing what it computes)")
    g.add_argument("--hidden", type=int, default=None,
                   help=f"LSTM hidden size per direction (default {ModelConfig.lstm_hidden}; with --init the "
                        "checkpoint's, or a larger one)")
    g.add_argument("--dropout", type=float, default=ModelConfig.dropout)
    g.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights and config")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=32,
                   help="global batch, over all processes (under torchrun each rank takes batch-size / WORLD_SIZE; "
                        "--lr is for this global batch: the same flags, the same optimisation on any number of ranks)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, warm-up then cosine)")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup", type=float, default=0.05, help="warm-up share of the run (in epochs)")
    g.add_argument("--clip", type=float, default=5.0, help="gradient norm clip")
    g.add_argument("--patience", type=int, default=8, help="early stop after N epochs without a better val CER")
    g.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many steps (0: no limit); the LR schedule still spans --epochs")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history.jsonl)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--dist-timeout", type=float, default=1800,
                   help="under torchrun: seconds a rank waits for the others in a collective before the job fails")
    g.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="mixed precision: BF16 autocast on a CPU that supports it, FP16 on CUDA (auto: where "
                        "supported; off: FP32)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format for the CNN")
    g.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: the thread plan's, htr.threads: every core this process may use)")
    g.add_argument("--metrics-port", type=int, default=9109, help="Prometheus exporter port (0: off)")
    g.add_argument("--metrics-addr", default="127.0.0.1", help="exporter bind address")
    g.add_argument("--metrics-linger", type=float, default=0.0,
                   help="keep the exporter up this many seconds after the run ends, so Prometheus scrapes the "
                        "final values (Ctrl-C ends it early)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=run)


# --- helpers ---------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} but CUDA is not available on this machine")
    return dev


def cpu_supports_bf16() -> bool:
    """True where oneDNN runs BF16 natively (AVX-512 BF16 or AMX); elsewhere BF16 is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype ``htr train`` uses: FP16 on CUDA, BF16 on a CPU with native BF16, else None (FP32).

    ``amp="on"`` on a CPU without native BF16 still uses BF16 (emulated: slower, for testing)."""
    if amp == "off":
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and (amp == "on" or cpu_supports_bf16()):
        return torch.bfloat16
    return None


def ctc_loss(logprobs: torch.Tensor, batch: dict) -> torch.Tensor:
    """Weighted mean over the batch of per-item CTC loss / label length (PyTorch's 'mean' convention)."""
    n, t, _ = logprobs.shape
    per_item = F.ctc_loss(
        logprobs.float().permute(1, 0, 2),  # (T, N, C)
        batch["targets"], torch.full((n,), t, dtype=torch.long), batch["target_lengths"],
        blank=0, reduction="none", zero_infinity=True,
    )
    per_item = per_item / batch["target_lengths"].clamp(min=1)
    w = batch["weights"].to(per_item.device)
    return (per_item * w).sum() / w.sum()


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` of training, then cosine down to 2% of the peak.

    ``progress`` is in epochs / total epochs (epoch + batch / batches in that epoch), not in steps:
    pseudo-labelling changes how many batches an epoch has, the schedule still ends with the run.
    """
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    rest = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * rest))


@torch.inference_mode()
def validate(model, loader, cfg: HTRConfig, device, ctx: distributed.Context = distributed.Context()) -> dict:
    """Greedy reads of ``loader`` scored against its labels; under torchrun ``loader`` holds this rank's shard
    (``ctx.shard``) and the reads are gathered back in dataset order, so every rank gets the same result."""
    model.eval()
    preds, labels, losses = [], [], []
    for batch in loader:
        logprobs = model(batch["pixels"].to(device)).float()
        losses.append(ctc_loss(logprobs, {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}).item())
        preds += [t for t, _ in ctc_greedy_decode(logprobs.cpu().numpy(), cfg.alphabet, cfg.blank)]
        labels += batch["texts"]
    model.train()
    if ctx.distributed:
        pairs, parts = ctx.gather_strided(list(zip(preds, labels))), ctx.gather(losses)
        preds, labels, losses = [p for p, _ in pairs], [t for _, t in pairs], [x for part in parts for x in part]
    result = score(preds, labels)
    result["loss"] = float(np.mean(losses)) if losses else float("nan")
    result["examples"] = [[t, p] for t, p in zip(labels[:5], preds[:5])]
    return result


def _channels(args) -> tuple[int, ...] | None:
    if args.channels is None:
        return None
    try:
        return tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        raise SystemExit(f"error: --channels {args.channels!r}: give 6 comma-separated widths, e.g. "
                         f"{','.join(map(str, ModelConfig.cnn_channels))}") from None


def _names_teacher(args, init_ckpt: dict | None) -> dict:
    """``CTCDecoder`` keywords for ``--pseudo-decoder names``: the flags, else the name model and weights the
    ``--init`` checkpoint is served with (``htr tune-decoder``), else weight 0.5 and no bonus."""
    from .ctc_decoder import checkpoint_decoding
    from .preprocess import NameModel

    spec, model = checkpoint_decoding(init_ckpt) if init_ckpt is not None else (None, None)
    if args.name_model is not None:
        if not args.name_model.is_file():
            raise SystemExit(f"error: --name-model {args.name_model}: no such file; build one with "
                             "python -m htr.name_model")
        model = NameModel.load(args.name_model)
    if model is None:
        raise SystemExit("error: --pseudo-decoder names needs a name model: --name-model FILE (python -m "
                         "htr.name_model), or an --init checkpoint tuned with one (htr tune-decoder)")
    tuned = spec is not None and spec.lm_weight > 0
    pick = lambda flag, attr, default: flag if flag is not None else (getattr(spec, attr) if tuned else default)
    return {"name_model": model, "lm_weight": pick(args.pseudo_lm_weight, "lm_weight", 0.5),
            "insertion_bonus": pick(args.pseudo_insertion_bonus, "insertion_bonus", 0.0), "lexicon_mode": "soft"}


def pseudo_label(model, cfg, folder: Path, lexicon_words, threshold: float, device, batch_size=64,
                 progress=True, stop=lambda: False, ctx: distributed.Context = distributed.Context(),
                 decoder_options: dict | None = None, keep: float = 1.0,
                 exclude: frozenset[str] = frozenset()) -> list[Sample]:
    """Read unlabelled images with a lexicon beam search (``decoder_options``: other ``CTCDecoder`` keywords,
    e.g. a name model and a soft lexicon); keep those at least ``threshold`` confident, and of those the
    ``keep`` share that is most confident (per rank under torchrun). Files named in ``exclude`` (images that
    have a real label: reviewed scans of this folder) are not read: their label comes from people, and the
    validation and eval parts of a real source must not come back into training as pseudo-labels.

    ``stop()`` is checked between batches: a run told to stop returns what it has labelled so far.
    Under torchrun each rank reads its shard (``ctx.shard``) of the sorted files; the caller gathers.
    """
    from tqdm import tqdm

    from .ctc_decoder import CTCDecoder
    from .preprocess import decode_images, preprocess_batch

    files = ctx.shard(sorted(p for p in folder.iterdir()
                             if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.name not in exclude))
    codec = CTCDecoder(cfg, "beam", 10, lexicon_words or None, **(decoder_options or {}))
    kept = []
    model.eval()
    with torch.inference_mode():
        for i in tqdm(range(0, len(files), batch_size), desc="pseudo-label", disable=not progress, unit="batch"):
            if stop():
                break
            chunk = files[i : i + batch_size]
            try:
                images = decode_images([p.read_bytes() for p in chunk])
            except ValueError:
                continue  # a corrupt file: leave the whole chunk out rather than guess
            pixels = preprocess_batch(images, cfg.input.height, cfg.input.width, cfg.input.binarize)
            logprobs = model(torch.from_numpy(pixels).to(device)).float().cpu().numpy()
            for path, (text, conf) in zip(chunk, codec(logprobs)):
                if text and conf >= threshold:
                    kept.append((conf, Sample(path, text, "pseudo")))
    model.train()
    if keep < 1.0:
        kept = sorted(kept, key=lambda cs: -cs[0])[: int(round(keep * len(kept)))]
    return sorted((s for _, s in kept), key=lambda s: s.path)


#: keys of ``last.pt`` that only a resumed run needs (``htr tune-decoder`` leaves them out of what it writes)
TRAINING_STATE = ("optimizer", "rng", "rng_ranks", "pseudo")


def _rng_state() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": json.dumps([keys.tolist(), pos, has_gauss, cached]),
            "python": json.dumps(random.getstate()[1])}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate((3, tuple(json.loads(state["python"])), None))


# --- main ------------------------------------------------------------------------------------------

def run(args) -> int:
    """``htr train``: one process, or one rank of a torchrun job (htr.distributed)."""
    return distributed.launch(_train, args, pick_device(args.device), args.dist_timeout)


def _train(args, ctx: distributed.Context, device: torch.device) -> int:
    from torch.utils.data import ConcatDataset, DataLoader
    from tqdm import tqdm

    say = print if ctx.is_main else (lambda *_a, **_k: None)  # one log for the job: rank 0's
    # affinity, not os.cpu_count(); ranks on one machine share its cores
    torch.set_num_threads(args.threads or ctx.threads())
    amp_dtype = autocast_dtype(device, args.amp)
    use_scaler = amp_dtype == torch.float16  # BF16 has FP32's range: no loss scaling
    rank_batch = ctx.rank_batch(args.batch_size)
    if not 0 < args.pseudo_keep <= 1:
        raise SystemExit(f"error: --pseudo-keep {args.pseudo_keep}: give a share in (0, 1]")
    args.out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)

    # config: from --init/--resume checkpoint, else from the flags
    resume_ckpt = None
    if args.resume:
        last = args.out / "last.pt"

        def read_last():  # on rank 0 only: OUT need not be shared storage
            if not last.is_file():
                raise SystemExit(f"error: --resume but {last} does not exist")
            return load_checkpoint(last)
        resume_ckpt = ctx.on_main(read_last)
        cfg = HTRConfig.from_dict(resume_ckpt["config"])
    elif args.init:
        init_ckpt = load_checkpoint(args.init)
        init_cfg = HTRConfig.from_dict(init_ckpt["config"])
        cfg = replace(init_cfg, input=replace(init_cfg.input, height=args.height or init_cfg.input.height,
                                              width=args.width or init_cfg.input.width),
                      model=replace(init_cfg.model, cnn_channels=_channels(args) or init_cfg.model.cnn_channels,
                                    lstm_hidden=args.hidden or init_cfg.model.lstm_hidden))
        if cfg.input != init_cfg.input:
            say(f"--init: input {init_cfg.input.height}x{init_cfg.input.width} -> "
                f"{cfg.input.height}x{cfg.input.width}")
        if cfg.model != init_cfg.model:
            grows = [f"{what} {a} -> {b}" for what, a, b in (
                ("CNN", init_cfg.model.cnn_channels, cfg.model.cnn_channels),
                ("LSTM", init_cfg.model.lstm_hidden, cfg.model.lstm_hidden)) if a != b]
            say(f"--init: grows {', '.join(grows)} (the new units start with no effect on the output)")
            try:  # refuse a shrink before any data is read
                check_adaptable(init_cfg, cfg)
            except ValueError as e:
                raise SystemExit(f"error: --init {args.init}: {e}") from None
    else:
        cfg = HTRConfig(input=InputConfig(height=args.height or InputConfig.height,
                                          width=args.width or InputConfig.width),
                        model=ModelConfig(cnn_channels=_channels(args) or ModelConfig.cnn_channels,
                                          lstm_hidden=args.hidden or ModelConfig.lstm_hidden, dropout=args.dropout))

    # data
    try:
        real_sources = [real_source(r) for r in (args.real if args.real is not None else [default_data_dir()])]
    except FileNotFoundError as e:
        raise SystemExit(f"error: --real {e}") from None
    train_samples, val_samples, real_names = [], [], set()
    for labels_csv, images in real_sources:
        samples, report = read_kaggle(labels_csv, images, cfg.alphabet, keep_empty=True)
        real_names.update(s.path.name for s in samples)
        tr, ev = split_samples(samples, args.eval_fraction)
        tr, va = split_train_val(tr, args.val_fraction)
        empty = sum(not s.text for s in tr)
        say(f"{report}; train {len(tr)} ({empty} empty), validation {len(va)} (train side), "
            f"held out for scoring {len(ev)} (not used here)")
        train_samples += tr * max(1, args.real_repeat)
        val_samples += va
    for spec in args.data:
        csv_path, _, images = spec.partition(":")
        samples, report = read_kaggle(csv_path, images or None, cfg.alphabet)
        say(report)
        train_samples += samples
        real_names.update(s.path.name for s in samples)
    if not val_samples:
        raise SystemExit("error: no validation images: give --real with a Kaggle-layout folder "
                         "(and a --val-fraction above 0)")
    names_path = args.names or next((c.parent / "names_corpus.txt" for c, _ in real_sources
                                     if (c.parent / "names_corpus.txt").is_file()), None)
    synth = None
    if args.synth:
        from .synth import SynthGenerator, load_names

        names = load_names(names_path) if names_path else None
        synth = SynthDataset(SynthGenerator(cfg.alphabet, names=names, seed=args.seed, blank_ratio=args.empty_ratio),
                             args.synth, args.seed)
    lexicon_words = None
    real_names = frozenset(real_names)
    if args.pseudo:
        from .ctc_decoder import read_lexicon

        overlap = sum(1 for p in args.pseudo.iterdir() if p.name in real_names)
        if overlap:
            say(f"pseudo-labelling skips the {overlap} images of {args.pseudo} that have a real label")

        lex_path = args.lexicon or names_path
        lexicon_words = read_lexicon(lex_path, cfg.alphabet) if lex_path else None
    pseudo_options = None
    if args.pseudo and args.pseudo_decoder == "names":
        # the checkpoint whose decoding a run carries: its own last.pt when resumed, else --init's
        pseudo_options = _names_teacher(args, resume_ckpt if resume_ckpt is not None else
                                        (init_ckpt if args.init else None))
        if args.lexicon is None:  # the name model alone (bench/pseudo_label_bench.py: the soft lexicon hurt)
            lexicon_words = None
        say("pseudo-labels: beam 10 + name model (weight {lm_weight}, insertion bonus {insertion_bonus})".format(
            **pseudo_options) + (", soft lexicon" if lexicon_words else ""))

    collate = Collate(cfg, build_augment(args.augment) if args.augment > 0 else None)
    val_loader = DataLoader(ImageDataset(ctx.shard(val_samples)), batch_size=64, shuffle=False, collate_fn=Collate(cfg))

    # model + optimisation
    model = CRNN(cfg).to(device)
    if args.init and not args.resume:
        model.load_state_dict(adapt_state_dict(init_ckpt["state_dict"], init_cfg, cfg, model.state_dict()))
    if args.channels_last:
        model.cnn.to(memory_format=torch.channels_last)

    def init_model():
        m = CRNN(init_cfg).to(device)
        m.load_state_dict(init_ckpt["state_dict"])
        return m
    net = ctx.wrap(model)  # DDP under torchrun: trains `model`, which stays the one to validate and save
    if ctx.rank:  # same initial weights (DDP broadcasts rank 0's), different dropout / augmentation draws
        seed_everything(args.seed + ctx.rank)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    per_epoch = math.ceil((len(train_samples) + (args.synth or 0)) / args.batch_size)  # before pseudo-labels

    def set_lr(progress: float) -> float:  # --max-steps stops early but does not reshape the schedule
        lr = args.lr * lr_factor(progress / args.epochs, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        return lr
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    start_epoch, step, best_cer, stale, pseudo = 0, 0, float("inf"), 0, []
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["state_dict"])
        opt.load_state_dict(resume_ckpt["optimizer"])
        start_epoch, step = resume_ckpt["epoch"], resume_ckpt["step"]
        best_cer, stale = resume_ckpt["best_cer"], resume_ckpt["stale"]
        pseudo = [Sample(Path(p), t, "pseudo", args.pseudo_weight) for p, t in resume_ckpt.get("pseudo", [])]
        rngs = resume_ckpt.get("rng_ranks", [])  # one per rank from a torchrun job; else all continue rank 0's
        _set_rng_state(rngs[ctx.rank] if len(rngs) == ctx.world else resume_ckpt["rng"])
        say(f"resumed from {args.out / 'last.pt'} at epoch {start_epoch}, step {step}")

    precision = {torch.bfloat16: "+ BF16 autocast", torch.float16: "+ FP16 autocast"}.get(amp_dtype, "(FP32)")
    # the --init checkpoint's own decoding (name model + weights, htr tune-decoder) stays with the fine-tuned
    # weights, so a fine-tune is served as its parent was; re-run htr tune-decoder to re-choose the weights
    carried = {}
    source = resume_ckpt if resume_ckpt is not None else (init_ckpt if args.init else None)
    if source is not None and source.get("decoding"):
        carried["decoding"] = source["decoding"]
    metrics = TrainingExporter(args.metrics_port if ctx.is_main else 0, args.metrics_addr, args.out.name, str(device))
    say(f"model: {count_parameters(model):,} parameters, input {cfg.input.height}x{cfg.input.width}, "
        f"{cfg.num_classes} classes; device {device} {precision}"
        f"{', channels-last' if args.channels_last else ''}; "
        f"{len(train_samples)} real/extra + {args.synth} synthetic samples per epoch, {per_epoch} steps/epoch"
        + (f"; metrics on http://{args.metrics_addr}:{args.metrics_port}/metrics" if args.metrics_port else ""))
    if ctx.distributed:
        say(ctx.describe(args.batch_size, args.lr))

    stop = {"now": False}

    def stopping() -> bool:  # every rank takes part (a collective under torchrun): all stop at the same step
        stop["now"] = ctx.any(stop["now"])
        return stop["now"]

    def _graceful(signum, _frame):
        stop["now"] = True
        say(f"\nsignal {signum}: finishing this step (or pseudo-labelling batch), then stopping",
            file=sys.stderr)

    old_handlers = {s: signal.signal(s, _graceful) for s in (signal.SIGINT, signal.SIGTERM)}
    history = open(args.out / "history.jsonl" if ctx.is_main else os.devnull, "a")
    model.train()
    try:
        for epoch in range(start_epoch, args.epochs):
            if args.pseudo and (epoch % args.pseudo_every == 0) and (epoch > 0 or args.init):
                # the first pass after --init reads with the init model at its own input size: a model whose
                # size was just changed has not yet adapted and would label worse
                first = not args.resume and args.init and epoch == start_epoch and cfg.input != init_cfg.input
                labeller, label_cfg = (init_model(), init_cfg) if first else (model, cfg)
                labelled = pseudo_label(labeller, label_cfg, args.pseudo, lexicon_words, args.pseudo_threshold,
                                        device, progress=not args.no_progress and ctx.is_main,
                                        stop=lambda: stop["now"], ctx=ctx, decoder_options=pseudo_options,
                                        keep=args.pseudo_keep, exclude=real_names)
                labelled = ctx.gather_sorted(labelled, key=lambda s: s.path)  # every rank: the same training set
                if stopping():  # the previous epoch's last.pt stays the resume point; --resume relabels
                    say("stopped while pseudo-labelling: this epoch is not trained", file=sys.stderr)
                    break
                pseudo = [replace(s, weight=args.pseudo_weight) for s in labelled]
                say(f"pseudo-labelled {len(pseudo)} images at confidence >= {args.pseudo_threshold}"
                    + (f", the most confident {args.pseudo_keep:.0%} of those" if args.pseudo_keep < 1 else ""))
            metrics.pseudo.set(len(pseudo))
            parts = [ImageDataset(train_samples + pseudo)]
            if synth is not None:
                synth.epoch = epoch
                parts.append(synth)
            dataset = ConcatDataset(parts)
            gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
            sampler = ctx.sampler(dataset, args.seed * 1000, epoch)  # None: one process, the loader shuffles
            loader = DataLoader(dataset, batch_size=rank_batch, shuffle=sampler is None, sampler=sampler,
                                generator=gen, collate_fn=collate, num_workers=args.workers, drop_last=True,
                                persistent_workers=False, worker_init_fn=lambda w: np.random.seed(
                                    (args.seed * 7919 + epoch * 31 + w + 104729 * ctx.rank) % 2**32))
            metrics.epoch.set(epoch + 1)
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress or not ctx.is_main,
                       unit="batch")
            window, t_window, n_window = [], time.perf_counter(), 0

            def report(bar):
                rate = n_window / max(1e-9, time.perf_counter() - t_window)
                lr_now, loss_now = opt.param_groups[0]["lr"], ctx.mean(float(np.mean(window)))  # the global batch's
                metrics.loss.labels("train").set(loss_now)
                metrics.lr.set(lr_now)
                metrics.rate.set(rate)
                metrics.step.set(step)
                metrics.update_memory(device)
                bar.set_postfix(loss=f"{loss_now:.3f}", lr=f"{lr_now:.2e}", ips=f"{rate:.0f}")

            for i_batch, batch in enumerate(bar):
                set_lr(epoch + i_batch / len(loader))
                pixels = batch["pixels"].to(device, non_blocking=True)
                if args.channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    logprobs = net(pixels)
                batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                loss = ctc_loss(logprobs, batch)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                scaler.step(opt)
                scaler.update()
                step += 1
                window.append(loss.item())
                n_window += len(batch["texts"]) * ctx.world  # every rank's batch is the same size
                metrics.samples.inc(len(batch["texts"]) * ctx.world)
                if step % 10 == 0:
                    report(bar)
                    window, t_window, n_window = [], time.perf_counter(), 0
                if stopping() or (args.max_steps and step >= args.max_steps):
                    break
            if window:
                report(bar)
            ctx.sync_buffers(model)  # rank 0's BatchNorm statistics: the model every rank validates is the one saved
            val = validate(model, val_loader, cfg, device, ctx)
            metrics.loss.labels("val").set(val["loss"])
            metrics.cer.labels("val").set(val["cer"])
            metrics.exact.labels("val").set(val["exact_match"])
            improved = val["cer"] < best_cer
            best_cer, stale = (val["cer"], 0) if improved else (best_cer, stale + 1)
            metrics.best_cer.set(best_cer)
            record = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"], "time": time.time(),
                      **{f"val_{k}": v for k, v in val.items()}, "pseudo": len(pseudo)}
            history.write(json.dumps(record) + "\n")
            history.flush()
            say(f"epoch {epoch + 1}: val loss {val['loss']:.3f} CER {val['cer']:.4f} exact {val['exact_match']:.3f} "
                f"(best CER {best_cer:.4f}{', saved best.pt' if improved else ''}) e.g. {val['examples'][:3]}")
            state = {"epoch": epoch + 1, "step": step, "best_cer": best_cer, "stale": stale,
                     "optimizer": opt.state_dict(), "rng": _rng_state(),
                     "val": {k: v for k, v in val.items() if k != "examples"},
                     "pseudo": [[str(s.path), s.text] for s in pseudo], "args": json.dumps(vars(args), default=str)}
            if ctx.distributed:
                state["rng_ranks"] = ctx.gather(state["rng"])
            if ctx.is_main:
                save_checkpoint(args.out / "last.pt", model, cfg, **state, **carried)
                if improved:
                    save_checkpoint(args.out / "best.pt", model, cfg, epoch=epoch + 1, step=step,
                                    val={k: v for k, v in val.items() if k != "examples"}, **carried)
            if stopping() or (args.max_steps and step >= args.max_steps):
                break
            if stale >= args.patience:
                say(f"early stop: no better validation CER for {args.patience} epochs")
                break
    finally:
        history.close()
        if args.metrics_linger > 0 and metrics.server is not None and not stop["now"] and sys.exc_info()[0] is None:
            say(f"metrics stay up on {args.metrics_addr}:{args.metrics_port} for {args.metrics_linger:.0f} s",
                flush=True)
            deadline = time.monotonic() + args.metrics_linger
            while time.monotonic() < deadline and not stop["now"]:
                time.sleep(0.2)
        metrics.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    say(f"done: best validation CER {best_cer:.4f}; checkpoints in {args.out}")
    return 0
