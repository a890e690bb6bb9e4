"""CRNN: a small VGG-style CNN, a 2-layer BiLSTM and a linear layer, returning CTC log-probabilities.

Input ``(N, 1, H, W)`` float32 from :func:`htr.preprocess.preprocess_batch` (ink 1.0, paper 0.0),
``H = cfg.input.height`` fixed, ``W`` any multiple of 4 (dynamic). Output ``(N, T, C)`` log-softmax
with ``T = W // 4`` frames and ``C = len(alphabet) + 1`` classes. Decoding stays outside the graph.
The module is scriptable and traceable (TorchScript, ONNX export with dynamic batch and width).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from .config import HTRConfig

#: Height pooling per stage: (2, 2), (2, 2), then (2, 1) twice: W shrinks by 4, H by 16.
_POOLS = ((2, 2), (2, 2), (2, 1), (2, 1))


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CRNN(nn.Module):
    def __init__(self, cfg: HTRConfig):
        super().__init__()
        m = cfg.model
        if len(m.cnn_channels) != 6:
            raise ValueError(f"cnn_channels needs 6 entries (2 single convs, 2 pairs), got {m.cnn_channels}")
        if cfg.input.height % 16:
            raise ValueError(f"input height must be a multiple of 16, got {cfg.input.height}")
        c = m.cnn_channels
        layers: list[nn.Module] = []
        layers += _conv(1, c[0]) + [nn.MaxPool2d(_POOLS[0])]
        layers += _conv(c[0], c[1]) + [nn.MaxPool2d(_POOLS[1])]
        layers += _conv(c[1], c[2]) + _conv(c[2], c[3]) + [nn.MaxPool2d(_POOLS[2])]
        layers += _conv(c[3], c[4]) + _conv(c[4], c[5]) + [nn.MaxPool2d(_POOLS[3])]
        self.cnn = nn.Sequential(*layers)
        feat = c[5] * (cfg.input.height // 16)
        self.proj = nn.Sequential(nn.Linear(feat, 2 * m.lstm_hidden), nn.Dropout(m.dropout))
        self.rnn = nn.LSTM(2 * m.lstm_hidden, m.lstm_hidden, num_layers=m.lstm_layers, bidirectional=True,
                           batch_first=True, dropout=m.dropout if m.lstm_layers > 1 else 0.0)
        self.head = nn.Linear(2 * m.lstm_hidden, cfg.num_classes)
        self.dropout = nn.Dropout(m.dropout)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.cnn(pixels)  # (N, C, H/16, W/4)
        n, c, h, w = x.shape
        x = x.permute(0, 3, 1, 2).reshape(n, w, c * h)  # (N, T, C*H/16)
        x = self.proj(x)  # (N, T, 2*hidden)
        x, _ = self.rnn(x)  # (N, T, 2*hidden)
        x = self.head(self.dropout(x))  # (N, T, classes)
        return x.log_softmax(-1)


def adapt_state_dict(state: dict, old: HTRConfig, new: HTRConfig, fresh: dict | None = None) -> dict:
    """Carry weights trained at one input size and width of network over to another (``htr train --init``).

    Input height: only the projection after the CNN depends on it: its inputs are ``channels x H/16`` feature
    rows, ordered channel-major. Each new row takes the old rows it overlaps, weighted by the overlap (area
    resampling of the weights), so a feature column that is uniform along the height projects to exactly what it
    did before. Width needs nothing (the network is width-agnostic).

    Wider CNN stages or a larger LSTM (``fresh``: the new network's initial ``state_dict``): see
    :func:`grow_state_dict`; the grown network computes what the old one did. Anything else (fewer channels,
    other layer counts, alphabet, blank) is refused.
    """
    check_adaptable(old, new)
    h_old, h_new = old.input.height // 16, new.input.height // 16
    if h_old != h_new:
        # overlap[j, r]: length of old row r inside new row j, in old-row units (each column sums to 1)
        edges = torch.arange(h_new + 1, dtype=torch.float64) * h_old / h_new
        r = torch.arange(h_old, dtype=torch.float64)
        overlap = (torch.minimum(edges[1:, None], r + 1) - torch.maximum(edges[:-1, None], r)).clamp(min=0)
        w = state["proj.0.weight"]  # (out, C*h_old), index c*h_old + row
        out, feat = w.shape
        w_new = w.reshape(out, feat // h_old, h_old).double() @ overlap.T  # (out, C, h_new)
        state = {**state, "proj.0.weight": w_new.to(w.dtype).reshape(out, -1).contiguous()}
    if (old.model.cnn_channels, old.model.lstm_hidden) != (new.model.cnn_channels, new.model.lstm_hidden):
        if fresh is None:
            raise ValueError("a wider network needs the new network's initial weights (fresh=) for its new units")
        state = grow_state_dict(state, old.model, new.model, h_new, fresh)
    return state


def check_adaptable(old: HTRConfig, new: HTRConfig) -> None:
    """ValueError unless :func:`adapt_state_dict` can carry ``old``'s weights to ``new``: same alphabet, blank
    and layer counts, and widths that only grow (cheap: configs only, no weights)."""
    if old.alphabet != new.alphabet or old.blank != new.blank or old.model.lstm_layers != new.model.lstm_layers:
        raise ValueError("only the input size and the widths can differ from the --init checkpoint "
                         "(alphabet, blank and layer counts fixed)")
    oc, nc = tuple(old.model.cnn_channels), tuple(new.model.cnn_channels)
    oh, nh = old.model.lstm_hidden, new.model.lstm_hidden
    if len(oc) != len(nc) or any(n < o for o, n in zip(oc, nc)) or nh < oh:
        raise ValueError(f"a network can only grow: CNN {oc} -> {nc}, LSTM {oh} -> {nh}")


def grow_state_dict(state: dict, old, new, rows: int, fresh: dict) -> dict:
    """Widen a trained CRNN (more CNN channels per stage, a larger LSTM) without changing what it computes.

    Function-preserving widening (Net2Net-style, with zeros instead of copies): every old unit keeps its
    weights; every new unit (channel, LSTM cell) takes its incoming weights from ``fresh`` (the new network's
    random initialisation) and **zero** weights towards every old unit, so at the start the old units compute
    exactly what they did and the output is unchanged; training then puts the new units to use (their outgoing
    weights get gradients because their activations are not zero). ``rows`` is the CNN's output height (H/16);
    ``old`` / ``new`` are model configs that :func:`check_adaptable` accepts.
    """
    oc = tuple(old.cnn_channels)
    oh, nh = old.lstm_hidden, new.lstm_hidden
    ar = torch.arange

    def gates(h_old, h_new):  # LSTM gate rows i, f, g, o: four blocks of h
        return torch.cat([ar(h_old) + k * h_new for k in range(4)])

    both = torch.cat([ar(oh), ar(oh) + nh])  # a bidirectional output: forward half, backward half
    feat = (ar(oc[-1])[:, None] * rows + ar(rows)).reshape(-1)  # channel-major CNN features (c * rows + row)
    convs = [k for k in state if k.startswith("cnn.") and k.endswith(".weight") and state[k].dim() == 4]

    def place(grown, rows_idx, cols_idx, value):  # old inputs -> old units; new inputs -> nobody (zeros)
        keep = torch.zeros(grown.shape[1], dtype=torch.bool)
        keep[cols_idx] = True
        grown[:, ~keep] = 0
        block = grown[rows_idx]
        block[:, cols_idx] = value
        grown[rows_idx] = block
        return grown

    out: dict = {}
    for key, value in state.items():
        target = fresh[key]
        if value.shape == target.shape:  # every dimension is set by the widths that give it meaning
            out[key] = value
            continue
        grown = target.clone()
        if key in convs:  # (out, in, 3, 3)
            i = convs.index(key)
            out[key] = place(grown, ar(oc[i]), ar(1 if i == 0 else oc[i - 1]), value)
        elif key.startswith("cnn."):  # BatchNorm weight / bias / running statistics of a wider stage
            grown[: value.shape[0]] = value
            out[key] = grown
        elif key == "proj.0.weight":  # (2*hidden, C*rows); the LSTM reads its outputs as one vector
            out[key] = place(grown, ar(2 * oh), feat, value)
        elif key == "proj.0.bias":
            grown[: 2 * oh] = value
            out[key] = grown
        elif key.startswith("rnn.bias"):
            grown[gates(oh, nh)] = value
            out[key] = grown
        elif key.startswith("rnn.weight_hh"):
            out[key] = place(grown, gates(oh, nh), ar(oh), value)
        elif key.startswith("rnn.weight_ih_l0"):
            out[key] = place(grown, gates(oh, nh), ar(2 * oh), value)
        elif key.startswith("rnn.weight_ih"):  # a deeper layer reads both directions of the one below
            out[key] = place(grown, gates(oh, nh), both, value)
        elif key == "head.weight":  # (classes, 2*hidden)
            out[key] = place(grown, ar(grown.shape[0]), both, value)
        else:
            raise ValueError(f"cannot grow {key}: {tuple(value.shape)} -> {tuple(target.shape)}")
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- checkpoints -----------------------------------------------------------------------------------
# A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
# torch.load(weights_only=True) reads it: no pickled classes, nothing executed on load.

def save_checkpoint(path: str | Path, model: nn.Module, cfg: HTRConfig, **extra) -> None:
    """Write ``{"config": dict, "state_dict": ..., **extra}`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": "htr-crnn/1", "config": cfg.to_dict(), "state_dict": model.state_dict(), **extra}
    buf = io.BytesIO()
    torch.save(payload, buf)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``); raises ValueError with the reason if it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises several types for corrupt files)
        raise ValueError(f"{path} is not a readable checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != "htr-crnn/1":
        raise ValueError(f"{path} is not an htr CRNN checkpoint (missing format 'htr-crnn/1')")
    return ckpt


def load_model(path: str | Path, map_location="cpu") -> tuple[CRNN, HTRConfig, dict]:
    """Rebuild the network from the config stored in the checkpoint; returns (model in eval mode, cfg, ckpt)."""
    ckpt = load_checkpoint(path, map_location)
    cfg = HTRConfig.from_dict(ckpt["config"])
    model = CRNN(cfg)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, cfg, ckpt
