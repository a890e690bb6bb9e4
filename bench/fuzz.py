"""Fuzz the served pipeline: thousands of mixed good and bad requests over gRPC and HTTP, then check nothing broke.

Starts its own tritonserver (``htr.serve.TritonServer``, the code behind ``htr serve``) on free loopback
ports, on ``--repository`` or, by default, on a repository built into a temporary folder by
``export/build_engine.py --formats torchscript``. ``--threads`` client threads, each with its own gRPC and
HTTP connection, send ``--requests`` requests (after ``--warmup`` more), each of a random category:

  good          1-8 real labelled images; each must get the offline model's text
  mixed         real images with bad and odd items between them (bench/badinputs.py): bad items get their
                error, good ones their offline text, odd ones are read
  bad           only refused items (random bytes, truncated JPEG, 0 bytes, a file path as bytes, bit flips)
  odd           1x1, 16-bit, palette, CMYK, grey + alpha: read, with the offline model's text
  bomb          the 30000 x 30000 PNG and a 64-megapixel one (refused from the header) beside a real image
  large         JPEGs whose header announces 1-20 megapixels (allowed; decoded in full) beside a real image
  wrong_tensor  wrong dtype / shape / name / empty batch to the ensemble or to ``crnn``: a clear error
  pixels        valid pixels straight to ``crnn``: log-probabilities of the right shape
  http_garbage  a raw HTTP POST of random bytes: an HTTP error with a JSON reason
  over_size     items under the per-image limit that add up to over ``max_request_bytes``: refused whole

The warm-up sends every category over both protocols first, so that buffers Triton and the stubs keep
(a 75 MB request grows them once) are in the baseline. Then it reports, prints and writes to ``--json``:
requests sent and per-category outcomes (as expected / unexpected, with the first unexpected ones),
whether the server is still ready and reads a good image, python-backend stub restarts (the PIDs of
tritonserver's ``triton_python_backend_stub`` children before and after: any change is a restart or a
death), and the resident memory (RSS) of tritonserver + its stubs at the start (after the warm-up) and
at the end, with the growth in percent.

RSS is sampled every ``--sample-every`` s during the run. Under this load it swings by +-15 % from one
sample to the next (an over-size request holds ~75 MB in tritonserver while it is in flight, and freed
memory stays in glibc's per-thread arenas for a while), so one reading at each end measures where the
swing happened to be, not growth. The start and end figures that decide are therefore the medians of the
samples in the first and the last ``--window`` s of the run; the single readings right after the warm-up
and after the run are reported beside them, as is the least-squares slope of RSS over the run.

The exit status is 1 if anything was unexpected, a stub changed, the server is not ready, fewer requests
than ``--requests`` were sent (``--max-seconds``), or RSS grew by more than ``--max-growth`` percent.

Examples::

    python bench/fuzz.py                                   # 10,000 requests, 4 threads, temporary repository
    python bench/fuzz.py --requests 500 --max-seconds 120  # a quick run
    python bench/fuzz.py --repository model_repository --threads 8
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import badinputs as bad  # noqa: E402
from _common import DEFAULT_DATA, ROOT, machine, require_data, stamp, write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fuzz.json"
CATEGORIES = {  # name -> weight in the random mix
    "good": 30, "mixed": 25, "bad": 12, "odd": 8, "bomb": 5, "large": 2, "wrong_tensor": 10, "pixels": 5,
    "http_garbage": 4.5, "over_size": 0.5,
}
TIMEOUT_S = 120.0
EXAMPLES = 10  # unexpected outcomes kept per category


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python bench/fuzz.py", description=__doc__,
                                 formatter_class=type("F", (argparse.ArgumentDefaultsHelpFormatter,
                                                            argparse.RawDescriptionHelpFormatter), {}))
    ap.add_argument("--requests", type=int, default=10_000, help="requests after the warm-up")
    ap.add_argument("--max-seconds", type=float, default=1800.0,
                    help="stop sending after this long (warm-up included) even if fewer requests were sent")
    ap.add_argument("--warmup", type=int, default=500,
                    help="requests before the run is measured (every category, both protocols, then the random mix)")
    ap.add_argument("--threads", type=int, default=4, help="client threads, each with its own gRPC and HTTP connection")
    ap.add_argument("--max-items", type=int, default=8, help="most images in one request")
    ap.add_argument("--exclude", default="", help=f"comma list of categories to leave out ({', '.join(CATEGORIES)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repository", type=Path, default=None,
                    help="model repository to serve (default: build one with export/build_engine.py into a temp dir)")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt",
                    help="checkpoint: the repository built by default, and the offline texts compared with")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kaggle-layout folder (labelled/*.jpg)")
    ap.add_argument("--images", type=int, default=64, help="real labelled images in the pool of good items")
    ap.add_argument("--max-growth", type=float, default=10.0, help="RSS growth (percent) above which the run fails")
    ap.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples during the run")
    ap.add_argument("--window", type=float, default=30.0,
                    help="RSS at the start / end = median of the samples in the run's first / last this many seconds")
    ap.add_argument("--json", default=str(RESULTS), help="write the results here ('' to skip)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = ap.parse_args(argv)
    args.exclude = [c for c in args.exclude.split(",") if c]
    unknown = set(args.exclude) - set(CATEGORIES)
    if unknown:
        ap.error(f"unknown categories {sorted(unknown)}; choose from {', '.join(CATEGORIES)}")
    return args


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# the server side: repository, processes, memory


def build_repository(checkpoint: Path, data: Path, root: Path) -> Path:
    from htr.export.build_engine import main as build_engine

    repo = root / "model_repository"
    rc = build_engine(["--checkpoint", str(checkpoint), "--repository", str(repo), "--engines", str(root / "engines"),
                       "--formats", "torchscript", "--data", str(data), "--parity-images", "16"])
    if rc != 0:
        sys.exit(f"error: export/build_engine.py failed with status {rc}")
    return repo


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory(server) -> dict:
    """RSS of tritonserver and each of its python-backend stubs (MiB: VmRSS kB / 1024; keys say _mb), and the total."""
    from htr.serve import stub_processes

    procs = {"tritonserver": server.pid} | {s.instance: s.pid for s in stub_processes(server.pid)}
    per = {}
    for name, pid in procs.items():
        try:
            per[name] = round(rss_mb(pid), 1)
        except OSError:  # gone meanwhile: shows up as a stub change
            per[name] = 0.0
    return {"total_mb": round(sum(per.values()), 1), "per_process_mb": per}


def rss_summary(samples: list, window: float) -> dict:
    """Start / end RSS: medians of the samples in the first and last ``window`` s (at most a third of the run
    each), per process too; the range, and the least-squares slope in MB per minute."""
    if len(samples) < 2:
        raise SystemExit("error: fewer than 2 RSS samples: run longer or lower --sample-every")
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


def stub_pids(server) -> dict[str, int]:
    from htr.serve import stub_processes

    return {s.instance: s.pid for s in stub_processes(server.pid)}


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


def make_pool(args, max_request_bytes: int, max_bytes: int) -> Pool:
    from htr.recognize import Recognizer

    files = sorted((args.data / "labelled").glob("*.jpg"))[: args.images]
    good = [f.read_bytes() for f in files]
    rec = Recognizer(args.checkpoint)
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
    texts, confs, errs = (res.as_numpy(n).reshape(-1) for n in ("TEXT", "CONFIDENCE", "ERROR"))
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
        inp = mod.InferInput("PIXELS", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = clients.infer(protocol, "crnn", [inp]).as_numpy("LOGPROBS")
        want = (n, width // 4, pool.num_classes)
        if out.shape != want or not np.isfinite(out).all():
            return f"LOGPROBS {out.shape} (want {want}), finite: {np.isfinite(out).all()}", counts
        return "", counts
    if category == "http_garbage":
        req = urllib.request.Request(f"{clients.url_http}/v2/models/htr/infer", data=bad.random_bytes(rng),
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
        inp = mod.InferInput("IMAGE_BYTES", [len(pool.over_size), 1], "BYTES")
        inp.set_data_from_numpy(np.array(pool.over_size, dtype=np.object_).reshape(-1, 1))
        try:
            clients.infer(protocol, "htr", [inp])
        except InferenceServerException as e:
            counts["refused_requests"] += 1
            return ("" if re.search(bad.REQUEST_TOO_LARGE, e.message() or "") else repr(e.message())), counts
        return "an over-size request was accepted", counts
    items = items_for(category, pool, rng, max_items)
    inp = mod.InferInput("IMAGE_BYTES", [len(items), 1], "BYTES")
    inp.set_data_from_numpy(np.array([i.blob for i in items], dtype=np.object_).reshape(-1, 1))
    res = clients.infer(protocol, "htr", [inp], [mod.InferRequestedOutput(n) for n in ("TEXT", "CONFIDENCE", "ERROR")])
    problem = _check_items(items, res)
    errs = res.as_numpy("ERROR").reshape(-1)
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


def drive(server, pool: Pool, work: list[tuple[str, str]], tally: Tally, args, deadline: float, seed: int,
          bar=None) -> int:
    """Send ``work`` from ``args.threads`` threads until done or ``deadline``; returns how many were sent."""
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
                    problem, counts = send(category, protocol, pool, clients, rng, args.max_items)
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

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(args.threads)]
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


def main(argv=None) -> int:
    args = parse_args(argv)
    require_data(args.data)
    from htr.export.repository import RepositoryOptions, read_config
    from htr.serve import TritonServer, free_port

    t_start = time.monotonic()
    deadline = t_start + args.max_seconds
    with tempfile.TemporaryDirectory(prefix="htr-fuzz-") as tmp:
        tmp = Path(tmp)
        repo = args.repository or build_repository(args.checkpoint, args.data, tmp)
        params = read_config(repo / "preprocess").parameters
        defaults = RepositoryOptions()
        max_request_bytes = int(params["max_request_bytes"].string_value) if "max_request_bytes" in params \
            else defaults.max_request_bytes
        max_bytes = int(params["max_bytes"].string_value) if "max_bytes" in params else defaults.max_bytes
        pool = make_pool(args, max_request_bytes, max_bytes)
        server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                              log_file=tmp / "tritonserver.log")
        say(f"starting tritonserver on {repo}")
        server.start(ready_timeout=300)
        say(f"ready in {server.startup_seconds:.1f} s: gRPC {server.url_grpc}, HTTP {server.url_http}")
        try:
            rng = random.Random(args.seed)
            tally_warm, tally = Tally(), Tally()
            warm_work = plan(args.warmup, rng, warmup=True, exclude=args.exclude)
            say(f"warm-up: {len(warm_work)} requests (every category on both protocols)")
            drive(server, pool, warm_work, tally_warm, args, deadline, args.seed)
            stubs_before, mem_before = stub_pids(server), memory(server)
            say(f"after the warm-up: RSS {mem_before['total_mb']:.0f} MiB (tritonserver + {len(stubs_before)} "
                f"stubs), stubs {stubs_before}")
            work = plan(args.requests, rng, warmup=False, exclude=args.exclude)
            bar = None
            if not args.no_progress:
                from tqdm import tqdm

                bar = tqdm(total=len(work), unit="req", desc="fuzz", smoothing=0.05)
            t0 = time.monotonic()
            samples, done = [], threading.Event()

            def sample():  # RSS over the run: a plateau (buffers, caches) or a steady climb (a leak)
                while not done.wait(args.sample_every):
                    m = memory(server)
                    samples.append((round(time.monotonic() - t0, 1), m["total_mb"], m["per_process_mb"]))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            sent = drive(server, pool, work, tally, args, deadline, args.seed + 1, bar)
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
    rss = rss_summary(samples, args.window)
    growth = rss["growth_percent"]
    instant = 100.0 * (mem_after["total_mb"] - mem_before["total_mb"]) / mem_before["total_mb"]
    unexpected = sum(tally.unexpected.values()) + sum(tally_warm.unexpected.values())
    ok = not unexpected and not changed and ready and growth < args.max_growth and sent == args.requests
    result = {
        "date": stamp(), "machine": machine(),
        "command": shlex.join(["python", "bench/fuzz.py", *(sys.argv[1:] if argv is None else argv)]),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "limits": {"max_request_bytes": max_request_bytes, "max_bytes": max_bytes},
        "warmup_requests": sum(tally_warm.sent.values()),
        "requests": sent, "requested": args.requests, "seconds": round(seconds, 1),
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
    say(f"{sent} requests in {seconds:.0f} s ({result['requests_per_s']} req/s) after {result['warmup_requests']} "
        f"warm-up; by protocol {dict(tally.by_protocol)}")
    print("\n| category | sent | as expected | unexpected | items read | items refused |\n|---|---|---|---|---|---|")
    for c, row in result["categories"].items():
        print(f"| {c} | {row['sent']} | {row['as_expected']} | {row['unexpected']} | {row.get('items_read', '')} | "
              f"{row.get('items_refused', row.get('refused_requests', ''))} |")
    print(f"\nserver ready and reading after the run: {ready}")
    print(f"python-backend stub restarts: {len(changed)} {changed or ''}")
    print(f"RSS tritonserver + stubs (median of the first / last {rss['window_s']:g} s of the run): "
          f"{rss['start_mb']:.0f} MiB -> {rss['end_mb']:.0f} MiB ({growth:+.1f} %, limit {args.max_growth:g} %); "
          f"samples {rss['min_mb']:.0f}-{rss['max_mb']:.0f} MiB, slope {rss['slope_mb_per_min']:+.1f} MiB/min")
    print("  per process: " + ", ".join(f"{k} {rss['start_per_process_mb'][k]:.0f} -> {v:.0f}"
                                         for k, v in rss["end_per_process_mb"].items()))
    print(f"  single readings: {mem_before['total_mb']:.0f} MiB right after the warm-up, "
          f"{mem_after['total_mb']:.0f} MiB after the run ({instant:+.1f} %)")
    if unexpected:
        print("unexpected outcomes (first of each category):")
        for c, ex in result["unexpected_examples"].items():
            print(f"  {c}: {ex[0]}")
        print(f"server log tail:\n{log_tail}")
    print("PASS" if ok else "FAIL")
    write_json(args.json, result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
