"""Fuzz the served pipeline: thousands of mixed good and bad requests over gRPC and HTTP from several client
threads, each request's outcome checked (:func:`send`), then whether anything broke (:func:`run`).

Each request is of a random category (weights in :data:`CATEGORIES`):

  good          1-8 real labelled images; each must get the offline model's text
  mixed         real images with bad and odd items between them (:mod:`htr.testing.bad_inputs`): bad items
                get their error, good ones their offline text, odd ones are read
  bad           only refused items (random bytes, truncated JPEG, 0 bytes, a file path as bytes, bit flips)
  odd           1x1, 16-bit, palette, CMYK, grey + alpha: read, with the offline model's text
  bomb          the 30000 x 30000 PNG and a 64-megapixel one (refused from the header) beside a real image
  large         JPEGs whose header announces 1-20 megapixels (allowed; decoded in full) beside a real image
  wrong_tensor  wrong dtype / shape / name / empty batch to the ensemble or to ``crnn``: a clear error
  pixels        valid pixels straight to ``crnn``: log-probabilities of the right shape
  http_garbage  a raw HTTP POST of random bytes: an HTTP error with a JSON reason
  over_size     items under the per-image limit that add up to over ``max_request_bytes``: refused whole

:func:`run` starts its own tritonserver, sends a warm-up of every category over both protocols (so that the
buffers Triton and the stubs keep are in the baseline), then the measured requests while sampling the
resident memory of tritonserver and its stubs; it reports per-category outcomes, stub restarts, readiness
afterwards and memory growth (start and end = medians of the samples in the run's first and last
``window`` s, see :func:`rss_summary`). ``bench/fuzz.py`` is its command line and describes the verdict.
"""
from __future__ import annotations

import json
import random
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from htr.paths import ROOT, default_data_dir
from htr.runtime.contract import (
    CONFIDENCE, CRNN, ENSEMBLE, ERROR, IMAGE_BYTES, LOGPROBS, MAX_BYTES, MAX_REQUEST_BYTES, PIXELS, PREPROCESS, TEXT,
)

from . import bad_inputs as bad
from .load import say
from .repository import build_cpu_repository
from .server import process_rss_kib, start_server, stub_pids

CATEGORIES = {  # name -> weight in the random mix
    "good": 30, "mixed": 25, "bad": 12, "odd": 8, "bomb": 5, "large": 2, "wrong_tensor": 10, "pixels": 5,
    "http_garbage": 4.5, "over_size": 0.5,
}
TIMEOUT_S = 120.0
OUTPUTS = (TEXT, CONFIDENCE, ERROR)
EXAMPLES = 10  # unexpected outcomes kept per category


class FuzzError(RuntimeError):
    """The run cannot be judged (too few memory samples)."""


@dataclass
class FuzzOptions:
    """What one run sends (the flags of ``bench/fuzz.py``, by the same names)."""

    requests: int = 10_000  # after the warm-up
    max_seconds: float = 1800.0  # stop sending after this long (warm-up included)
    warmup: int = 500
    threads: int = 4  # client threads, each with its own gRPC and HTTP connection
    max_items: int = 8  # most images in one request
    exclude: list[str] = field(default_factory=list)  # categories left out
    seed: int = 0
    repository: Path | None = None  # default: the CPU repository built into a temporary folder
    checkpoint: Path = ROOT / "models" / "crnn_names.pt"  # the repository built, and the offline texts
    data: Path = field(default_factory=default_data_dir)  # Kaggle-layout folder (labelled/*.jpg)
    images: int = 64  # real labelled images in the pool of good items
    max_growth: float = 10.0  # RSS growth (percent) above which the run fails
    sample_every: float = 2.0  # seconds between RSS samples during the run
    window: float = 30.0  # RSS at the start / end = median of the samples in the first / last this many s
    progress: bool = True  # a tqdm progress bar


# ---------------------------------------------------------------------------------------------------
# memory


def memory(server) -> dict:
    """RSS of tritonserver and each of its python-backend stubs (MiB: VmRSS kB / 1024; keys say _mb), and the total."""
    per = {name: round(kib / 1024, 1) for name, kib in process_rss_kib(server).items()}
    return {"total_mb": round(sum(per.values()), 1), "per_process_mb": per}


def rss_summary(samples: list, window: float) -> dict:
    """Start / end RSS: medians of the samples in the first and last ``window`` s (at most a third of the run
    each), per process too; the range, and the least-squares slope in MB per minute."""
    if len(samples) < 2:
        raise FuzzError("fewer than 2 RSS samples: run longer or lower --sample-every")
    t = np.array([s[0] for s in samples])
    total = np.array([s[1] for s in samples])
    window = min(window, (t[-1] - t[0]) / 3)
    first, last = t <= t[0] + window, t >= t[-1] - window

    def med(mask, key=None):
        values = total[mask] if key is None else np.array([s[2].get(key, 0.0) for s in samples])[mask]
        return round(float(np.median(values)), 1)

    start, end = med(first), med(last)
    return {
        "window_s": round(float(window), 1), "samples": len(samples), "start_mb": start, "end_mb": end,
        "growth_percent": round(100.0 * (end - start) / start, 2),
        "start_per_process_mb": {k: med(first, k) for k in samples[0][2]},
        "end_per_process_mb": {k: med(last, k) for k in samples[-1][2]},
        "min_mb": float(total.min()), "max_mb": float(total.max()),
        "slope_mb_per_min": round(float(np.polyfit(t / 60.0, total, 1)[0]), 2),
    }


# ---------------------------------------------------------------------------------------------------
# requests


@dataclass
class Pool:
    """Everything requests are drawn from, with what the offline model reads for each valid image."""

    good: list[bytes]
    good_text: list[str]
    odd: list[bad.Case]
    odd_text: list[str]
    wrong: list[bad.WrongTensor]
    over_size: list[bytes]
    bombs: list[bad.Case]
    height: int
    width: int
    num_classes: int


def make_pool(opts: FuzzOptions, max_request_bytes: int, max_bytes: int) -> Pool:
    from htr.offline import OfflineRecognizer

    files = sorted((opts.data / "labelled").glob("*.jpg"))[: opts.images]
    good = [f.read_bytes() for f in files]
    rec = OfflineRecognizer(opts.checkpoint)
    odd = [c for k in range(4) for c in bad.odd_cases(good[k])]
    ic = rec.cfg.input
    return Pool(
        good=good, good_text=[t for t, _ in rec.predict_blobs(good)],
        odd=odd, odd_text=[t for t, _ in rec.predict_blobs([c.blob for c in odd])],
        wrong=bad.wrong_tensors(good[0], ic.height), over_size=bad.over_size_request(max_request_bytes, max_bytes),
        bombs=[c for c in bad.bad_cases(good[0]) if c.name in ("bomb_30000x30000", "over_50_megapixels")],
        height=ic.height, width=ic.width, num_classes=rec.cfg.num_classes,
    )


@dataclass
class Item:
    blob: bytes
    kind: str  # good | odd | refused | either (a bit-flipped image: read or refused)
    text: str = ""  # expected text (good, odd)
    error: str = ""  # regex (refused)


def _good(pool: Pool, rng: random.Random) -> Item:
    k = rng.randrange(len(pool.good))
    return Item(pool.good[k], "good", pool.good_text[k])


def _odd(pool: Pool, rng: random.Random) -> Item:
    k = rng.randrange(len(pool.odd))
    return Item(pool.odd[k].blob, "odd", pool.odd_text[k])


def _refused(pool: Pool, rng: random.Random) -> Item:
    if rng.random() < 0.2:
        return Item(bad.flip_bytes(pool.good[rng.randrange(len(pool.good))], rng), "either", error=bad.ANY_REFUSAL)
    case = bad.random_bad_case(pool.good[rng.randrange(len(pool.good))], rng)
    return Item(case.blob, "refused", error=case.error)


def items_for(category: str, pool: Pool, rng: random.Random, max_items: int) -> list[Item]:
    n = rng.randint(1, max_items)
    if category == "good":
        return [_good(pool, rng) for _ in range(n)]
    if category == "odd":
        return [_odd(pool, rng) for _ in range(n)]
    if category == "bad":
        return [_refused(pool, rng) for _ in range(n)]
    if category == "bomb":
        case = rng.choice(pool.bombs)
        return [_good(pool, rng), Item(case.blob, "refused", error=case.error)]
    if category == "large":  # read as a rule; a refusal (libjpeg giving up) is a clear answer too
        width = rng.randint(1000, 20000)
        size = (width, rng.randint(1_000_000, 20_000_000) // width)
        jpeg = pool.good[rng.randrange(len(pool.good))]
        return [_good(pool, rng), Item(bad.lying_jpeg(jpeg, *size), "either", error=bad.ANY_REFUSAL)]
    if category == "mixed":
        items = [rng.choice((_good, _good, _odd, _refused))(pool, rng) for _ in range(max(2, n))]
        items[rng.randrange(len(items))] = _refused(pool, rng)
        items[rng.randrange(len(items))] = _good(pool, rng)
        return items
    raise ValueError(category)


class Clients:
    """One thread's connections: tritonclient gRPC and HTTP (the HTTP client is not thread-safe)."""

    def __init__(self, server):
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.modules = {"grpc": grpcclient, "http": httpclient}
        self.clients = {
            "grpc": grpcclient.InferenceServerClient(server.url_grpc, channel_args=[("grpc.enable_http_proxy", 0)]),
            "http": httpclient.InferenceServerClient(server.http_endpoint, connection_timeout=TIMEOUT_S,
                                                     network_timeout=TIMEOUT_S),
        }
        self.url_http = server.url_http
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def infer(self, protocol: str, model: str, inputs, outputs=None):
        kw = {"client_timeout": TIMEOUT_S} if protocol == "grpc" else {}
        return self.clients[protocol].infer(model, inputs, outputs=outputs, **kw)

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def _check_items(items: list[Item], res) -> str:
    """'' when every item got what it should, else what went wrong (the first mismatch)."""
    texts, confs, errs = (res.as_numpy(n).reshape(-1) for n in OUTPUTS)
    if len(texts) != len(items):
        return f"{len(texts)} results for {len(items)} items"
    for k, (item, t, c, e) in enumerate(zip(items, texts, confs, errs)):
        t, e = t.decode(), e.decode()
        if item.kind in ("good", "odd"):
            if e or t != item.text:
                return f"item {k} ({item.kind}): got {t!r} error {e!r}, want {item.text!r}"
        elif item.kind == "refused" or (item.kind == "either" and e):
            if not re.search(item.error, e) or t or c != 0.0:
                return f"item {k} ({item.kind}, {len(item.blob)} bytes): text {t!r} error {e!r}"
    return ""


def send(category: str, protocol: str, pool: Pool, clients: Clients, rng: random.Random,
         max_items: int) -> tuple[str, Counter]:
    """One request; returns ('' or what was unexpected, item outcome counts)."""
    from tritonclient.utils import InferenceServerException

    counts = Counter()
    mod = clients.modules[protocol]
    if category == "wrong_tensor":
        case = rng.choice(pool.wrong)
        try:
            clients.infer(protocol, case.model, [case.as_input(mod)])
        except InferenceServerException as e:
            return ("" if re.search(case.error, e.message() or "") else f"{case}: {e.message()!r}"), counts
        return f"{case} was accepted", counts
    if category == "pixels":
        n = rng.randint(1, max_items)
        width = rng.choice((pool.width, pool.width // 2, pool.width * 2))
        x = np.random.default_rng(rng.getrandbits(32)).random((n, 1, pool.height, width), dtype=np.float32)
        inp = mod.InferInput(PIXELS, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = clients.infer(protocol, CRNN, [inp]).as_numpy(LOGPROBS)
        want = (n, width // 4, pool.num_classes)
        if out.shape != want or not np.isfinite(out).all():
            return f"LOGPROBS {out.shape} (want {want}), finite: {np.isfinite(out).all()}", counts
        return "", counts
    if category == "http_garbage":
        req = urllib.request.Request(f"{clients.url_http}/v2/models/{ENSEMBLE}/infer", data=bad.random_bytes(rng),
                                     method="POST")
        try:
            with clients.opener.open(req, timeout=TIMEOUT_S) as r:
                return f"garbage body answered {r.status}", counts
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                reason = json.loads(body)["error"]
            except (ValueError, KeyError):
                return f"garbage body: HTTP {e.code} without a JSON error: {body[:200]!r}", counts
            return ("" if e.code >= 400 and reason else f"HTTP {e.code} {reason!r}"), counts
    if category == "over_size":
        inp = mod.InferInput(IMAGE_BYTES, [len(pool.over_size), 1], "BYTES")
        inp.set_data_from_numpy(np.array(pool.over_size, dtype=np.object_).reshape(-1, 1))
        try:
            clients.infer(protocol, ENSEMBLE, [inp])
        except InferenceServerException as e:
            counts["refused_requests"] += 1
            return ("" if re.search(bad.REQUEST_TOO_LARGE, e.message() or "") else repr(e.message())), counts
        return "an over-size request was accepted", counts
    items = items_for(category, pool, rng, max_items)
    inp = mod.InferInput(IMAGE_BYTES, [len(items), 1], "BYTES")
    inp.set_data_from_numpy(np.array([i.blob for i in items], dtype=np.object_).reshape(-1, 1))
    res = clients.infer(protocol, ENSEMBLE, [inp], [mod.InferRequestedOutput(n) for n in OUTPUTS])
    problem = _check_items(items, res)
    errs = res.as_numpy(ERROR).reshape(-1)
    counts["items_read"] += int(sum(1 for e in errs if not e))
    counts["items_refused"] += int(sum(1 for e in errs if e))
    return problem, counts


# ---------------------------------------------------------------------------------------------------
# the run


@dataclass
class Tally:
    sent: Counter = field(default_factory=Counter)
    expected: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    items: dict = field(default_factory=lambda: defaultdict(Counter))
    examples: dict = field(default_factory=lambda: defaultdict(list))
    by_protocol: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, category: str, protocol: str, problem: str, counts: Counter) -> None:
        with self.lock:
            self.sent[category] += 1
            self.by_protocol[protocol] += 1
            self.items[category].update(counts)
            if problem:
                self.unexpected[category] += 1
                if len(self.examples[category]) < EXAMPLES:
                    self.examples[category].append(f"{protocol}: {problem}"[:500])
            else:
                self.expected[category] += 1

    def table(self) -> dict:
        return {c: {"sent": self.sent[c], "as_expected": self.expected[c], "unexpected": self.unexpected[c],
                    **dict(self.items[c])} for c in CATEGORIES if self.sent[c]}


def plan(n: int, rng: random.Random, warmup: bool, exclude=()) -> list[tuple[str, str]]:
    """(category, protocol) per request: the warm-up starts with every category on both protocols."""
    names = [c for c in CATEGORIES if c not in exclude]
    weights = [CATEGORIES[c] for c in names]
    out = [(c, p) for c in names for p in ("grpc", "http")] if warmup else []
    out = [(c, p) for c, p in out if not (c == "http_garbage" and p == "grpc")]
    while len(out) < n:
        out.append((rng.choices(names, weights)[0], rng.choice(("grpc", "http"))))
    return out


def drive(server, pool: Pool, work: list[tuple[str, str]], tally: Tally, opts: FuzzOptions, deadline: float, seed: int,
          bar=None) -> int:
    """Send ``work`` from ``opts.threads`` threads until done or ``deadline``; returns how many were sent."""
    lock, nxt, sent = threading.Lock(), [0], [0]

    def worker(tid: int):
        rng = random.Random(seed * 1000 + tid)
        clients = Clients(server)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if nxt[0] >= len(work):
                        return
                    category, protocol = work[nxt[0]]
                    nxt[0] += 1
                if category == "http_garbage":
                    protocol = "http"
                try:
                    problem, counts = send(category, protocol, pool, clients, rng, opts.max_items)
                except Exception as e:  # noqa: BLE001  (a transport failure, a timeout: all unexpected)
                    problem, counts = f"{type(e).__name__}: {e}", Counter()
                    if "closed" in str(e).lower() or "unavailable" in str(e).lower():
                        clients.close()
                        clients = Clients(server)
                tally.add(category, protocol, problem, counts)
                with lock:
                    sent[0] += 1
                if bar is not None:
                    bar.update(1)
        finally:
            clients.close()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(opts.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent[0]


def good_request_ok(server, pool: Pool) -> bool:
    clients = Clients(server)
    try:
        for protocol in ("grpc", "http"):
            problem, _ = send("good", protocol, pool, clients, random.Random(1), 4)
            if problem:
                say(f"a good request after the run failed over {protocol}: {problem}")
                return False
        return True
    finally:
        clients.close()


# ---------------------------------------------------------------------------------------------------
# one whole run


def served_limits(repository: Path) -> tuple[int, int]:
    """(max_request_bytes, max_bytes) the repository's ``preprocess`` model enforces."""
    from htr.export.repository import read_config

    params = read_config(repository / PREPROCESS).parameters
    max_request_bytes = int(params["max_request_bytes"].string_value) if "max_request_bytes" in params \
        else MAX_REQUEST_BYTES
    max_bytes = int(params["max_bytes"].string_value) if "max_bytes" in params else MAX_BYTES
    return max_request_bytes, max_bytes


def run(opts: FuzzOptions) -> tuple[dict, str]:
    """Start a server (on ``opts.repository``, or on the CPU repository built into a temporary folder), send
    the warm-up then ``opts.requests`` requests, and judge the run. Returns the result (``ok`` is the
    verdict) and the tail of the server's log."""
    t_start = time.monotonic()
    deadline = t_start + opts.max_seconds
    with tempfile.TemporaryDirectory(prefix="htr-fuzz-") as tmp:
        tmp = Path(tmp)
        repo = opts.repository or build_cpu_repository(tmp / "model_repository", opts.checkpoint, opts.data,
                                                       parity_images=16)
        max_request_bytes, max_bytes = served_limits(repo)
        pool = make_pool(opts, max_request_bytes, max_bytes)
        server = start_server(repo, tmp / "tritonserver.log", ready_timeout=300)
        try:
            rng = random.Random(opts.seed)
            tally_warm, tally = Tally(), Tally()
            warm_work = plan(opts.warmup, rng, warmup=True, exclude=opts.exclude)
            say(f"warm-up: {len(warm_work)} requests (every category on both protocols)")
            drive(server, pool, warm_work, tally_warm, opts, deadline, opts.seed)
            stubs_before, mem_before = stub_pids(server), memory(server)
            say(f"after the warm-up: RSS {mem_before['total_mb']:.0f} MiB (tritonserver + {len(stubs_before)} "
                f"stubs), stubs {stubs_before}")
            work = plan(opts.requests, rng, warmup=False, exclude=opts.exclude)
            bar = None
            if opts.progress:
                from tqdm import tqdm

                bar = tqdm(total=len(work), unit="req", desc="fuzz", smoothing=0.05)
            t0 = time.monotonic()
            samples, done = [], threading.Event()

            def sample():  # RSS over the run: a plateau (buffers, caches) or a steady climb (a leak)
                while not done.wait(opts.sample_every):
                    m = memory(server)
                    samples.append((round(time.monotonic() - t0, 1), m["total_mb"], m["per_process_mb"]))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            sent = drive(server, pool, work, tally, opts, deadline, opts.seed + 1, bar)
            seconds = time.monotonic() - t0
            done.set()
            sampler.join()
            if bar is not None:
                bar.close()
            time.sleep(1.0)  # let the last responses' buffers go back before measuring
            stubs_after, mem_after = stub_pids(server), memory(server)
            ready = server.is_ready() and good_request_ok(server, pool)
        finally:
            server.stop()
        log_tail = server.log_tail(20)

    changed = {i: (stubs_before.get(i), stubs_after.get(i)) for i in stubs_before.keys() | stubs_after.keys()
               if stubs_before.get(i) != stubs_after.get(i)}
    rss = rss_summary(samples, opts.window)
    growth = rss["growth_percent"]
    instant = 100.0 * (mem_after["total_mb"] - mem_before["total_mb"]) / mem_before["total_mb"]
    unexpected = sum(tally.unexpected.values()) + sum(tally_warm.unexpected.values())
    ok = not unexpected and not changed and ready and growth < opts.max_growth and sent == opts.requests
    result = {
        "limits": {"max_request_bytes": max_request_bytes, "max_bytes": max_bytes},
        "warmup_requests": sum(tally_warm.sent.values()),
        "requests": sent, "requested": opts.requests, "seconds": round(seconds, 1),
        "requests_per_s": round(sent / seconds, 1) if seconds else None,
        "by_protocol": dict(tally.by_protocol),
        "categories": tally.table(),
        "unexpected": unexpected,
        "unexpected_examples": {c: ex for c, ex in {**tally_warm.examples, **tally.examples}.items()},
        "server_ready_after": ready,
        "stub_restarts": len(changed), "stub_changes": {k: list(v) for k, v in changed.items()},
        "stubs_before": stubs_before, "stubs_after": stubs_after,
        "rss": rss, "rss_growth_percent": growth,
        "rss_single_reading": {"after_warmup": mem_before, "after_run": mem_after,
                               "growth_percent": round(instant, 2)},
        "rss_samples": [{"t_s": t, "total_mb": m, "per_process_mb": p} for t, m, p in samples],
        "ok": ok,
    }
    return result, log_tail
