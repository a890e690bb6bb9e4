"""Training on several processes (htr.distributed): real ``torchrun`` jobs on CPU (gloo, loopback), 2 ranks.

The jobs run this file as their script: :func:`_worker` wraps a few ``htr.train`` functions to record, per rank,
the training loss of each step, the sampler's indices, the pseudo-labels read and the weights at each validation,
then runs ``htr train``. The tests compare those records:

- the two ranks hold equal parameters (and BatchNorm buffers) after every epoch;
- the ranks' sampler shards are disjoint and together are the 1-process run's epoch, batch by batch;
- the 2-process loss equals the 1-process loss of the same global batch within ``LOSS_RTOL`` (per-rank
  BatchNorm statistics are the one difference: measured <= 0.35% over 8 steps of this tiny model);
- pseudo-labelling is sharded (each rank reads half the files) and gathered into the 1-process list;
- rank 0 alone writes history and serves metrics; a resumed job, launched as two "nodes" with static
  rendezvous on 127.0.0.1, ends with the very weights of a straight run;
- a rank that raises ends the job within ``CRASH_BOUND_S`` with a non-zero exit and that rank's error; a rank
  that hangs is given up after ``--dist-timeout`` (the job ends within ``HANG_BOUND_S``).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from htr.distributed import Context

TINY = ["--channels", "8,16,16,16,32,32", "--hidden", "16", "--dropout", "0"]
LOSS_RTOL = 0.01  # 2 ranks vs 1 process, same global batch: per-rank BatchNorm statistics only
LOSS_STEPS = 6  # steps compared (the loss drifts apart slowly as the weights do)
CRASH_BOUND_S = 60.0
CRASH_MESSAGE = "injected failure on rank 1 (test hook)"
HANG_TIMEOUT_S = 10  # --dist-timeout of the hang test
HANG_BOUND_S = 60.0
JOB_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(record: Path, argv: list[str], *launch: str, env: dict | None = None,
             timeout: float = JOB_TIMEOUT_S) -> subprocess.Popen:
    """Start ``torchrun LAUNCH tests/test_distributed.py RECORD train ARGV`` (output in RECORD/torchrun*.log) in a
    session of its own, so that :func:`finish` can end it."""
    record.mkdir(parents=True, exist_ok=True)
    log = open(record / f"torchrun{len(list(record.glob('torchrun*.log')))}.log", "w")
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, __file__, str(record), "train", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=record, start_new_session=True)
    log.close()  # the child holds its own copy
    proc.log_path, proc.timeout = Path(log.name), timeout
    return proc


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from the parent ids in /proc (torchrun starts each rank in its own session)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """The job's exit status and output; a job still running after its timeout is killed (the agent and every
    rank) and fails the test."""
    try:
        rc = proc.wait(timeout=proc.timeout)
    except subprocess.TimeoutExpired:
        ranks_left = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in ranks_left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        pytest.fail(f"torchrun still running after {proc.timeout} s:\n{proc.log_path.read_text()[-4000:]}")
    return rc, proc.log_path.read_text()


def ranks(record: Path, world: int) -> list[dict]:
    return [json.loads((record / f"rank{r}.json").read_text()) for r in range(world)]


def assert_partition(shards: list[list[int]], whole: list[int]) -> None:
    """``shards`` are disjoint and together are exactly ``whole``."""
    seen = [i for s in shards for i in s]
    assert len(seen) == len(set(seen)), "shards overlap"
    assert sorted(seen) == sorted(whole), "shards do not cover the whole"


# --- the worker (runs inside each torchrun rank) ---------------------------------------------------------

def _worker(record: Path, argv: list[str]) -> int:
    import htr.distributed as dist_mod
    import htr.train as train_mod
    from htr.cli import main as cli

    rank = int(os.environ["RANK"])
    log = {"loss": [], "indices": [], "pseudo": [], "validated": 0}
    crash = os.environ.get("HTR_TEST_CRASH_RANK") == str(rank)
    hang = os.environ.get("HTR_TEST_HANG_RANK") == str(rank)
    real_loss, real_sampler = train_mod.ctc_loss, dist_mod.Context.sampler
    real_validate, real_pseudo = train_mod.validate, train_mod.pseudo_label

    def ctc_loss(logprobs, batch):
        loss = real_loss(logprobs, batch)
        if torch.is_grad_enabled():  # a training step (validation runs in inference mode)
            log["loss"].append(loss.item())
            if crash and len(log["loss"]) == 2:
                raise RuntimeError(CRASH_MESSAGE)
            if hang and len(log["loss"]) == 2:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # like a rank stuck in native code
                time.sleep(3600)
        return loss

    def sampler(self, dataset, seed, epoch):
        s = real_sampler(self, dataset, seed, epoch)
        log["indices"].append(list(s))  # deterministic per (seed, epoch): listing it does not change the run's
        return s

    def validate(model, *args, **kwargs):
        log["validated"] += 1
        torch.save(model.state_dict(), record / f"rank{rank}_epoch{log['validated']}.pt")
        return real_validate(model, *args, **kwargs)

    def pseudo_label(*args, **kwargs):
        kept = real_pseudo(*args, **kwargs)
        log["pseudo"].append([s.path.name for s in kept])
        return kept

    train_mod.ctc_loss, dist_mod.Context.sampler = ctc_loss, sampler
    train_mod.validate, train_mod.pseudo_label = validate, pseudo_label
    try:
        return cli(argv)
    finally:
        (record / f"rank{rank}.json").write_text(json.dumps(log))


# --- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def common(tiny_kaggle, scans, tmp_path_factory) -> list[str]:
    """Flags of every job: 2 epochs, global batch 8, pseudo-labels (threshold 0: all reads) from an --init model."""
    from htr.cli import main as cli

    init = tmp_path_factory.mktemp("init")
    assert cli(["train", "--real", str(tiny_kaggle), "--synth", "0", "--epochs", "1", "--max-steps", "2",
                "--workers", "0", "--metrics-port", "0", "--no-progress", "--out", str(init), *TINY]) == 0
    return ["--real", str(tiny_kaggle), "--synth", "0", "--real-repeat", "1", "--augment", "0", "--batch-size", "8",
            "--workers", "0", "--seed", "3", "--epochs", "2", "--init", str(init / "last.pt"),
            "--pseudo", str(scans), "--pseudo-threshold", "0", "--dist-timeout", "60", *TINY]


@pytest.fixture(scope="module")
def jobs(common, tmp_path_factory) -> dict:
    """The 2-rank job (2 epochs, metrics and progress on) and a 1-process torchrun job of the same global batch
    (LOSS_STEPS steps), run side by side."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    port = free_port()
    one_flags = ["--max-steps", str(LOSS_STEPS), "--threads", "1", "--metrics-port", "0", "--no-progress"]
    procs = {"two": torchrun(two, [*common, "--metrics-port", str(port), "--out", str(two / "out")],
                             "--standalone", "--nproc_per_node", "2"),
             "one": torchrun(one, [*common, *one_flags, "--out", str(one / "out")],
                             "--standalone", "--nproc_per_node", "1")}
    result = {}
    for name, proc in procs.items():
        rc, out = finish(proc)
        assert rc == 0, f"{name}: {out[-4000:]}"
        result[name] = out
    return {"two": two, "one": one, "out2": result["two"], "port": port}


# --- pure functions ------------------------------------------------------------------------------------------

def test_plain_context_changes_nothing():
    from htr.distributed import init

    ctx, device = init(torch.device("cpu"), 10, environ={})
    assert not ctx.distributed and ctx.is_main and device == torch.device("cpu")
    items = list(range(7))
    assert ctx.shard(items) == items and ctx.gather("x") == ["x"] and ctx.gather_strided(items) == items
    assert ctx.any(True) and not ctx.any(False) and ctx.mean(2.5) == 2.5 and ctx.rank_batch(32) == 32
    assert ctx.sampler(items, 0, 0) is None and ctx.on_main(lambda: 3) == 3


@pytest.mark.parametrize("n", [0, 1, 5, 8, 61])
@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_and_cover_and_gather_restores_the_order(n, world, monkeypatch):
    items = list(range(n))
    shards = [Context(rank=r, world=world).shard(items) for r in range(world)]
    assert_partition(shards, items)
    monkeypatch.setattr(Context, "gather", lambda self, obj: shards)  # all_gather_object's answer, on any rank
    assert Context(rank=1, world=world, backend="gloo").gather_strided(shards[1]) == items


def test_partition_check_rejects_overlap_and_gaps():
    with pytest.raises(AssertionError, match="overlap"):
        assert_partition([[0, 1, 2], [2, 3]], [0, 1, 2, 3])
    with pytest.raises(AssertionError, match="cover"):
        assert_partition([[0, 2], [1]], [0, 1, 2, 3])


def test_an_incomplete_torchrun_environment_is_a_clear_error():
    from htr.distributed import init

    with pytest.raises(SystemExit, match="WORLD_SIZE is set but the torchrun environment is incomplete"):
        init(torch.device("cpu"), 10, environ={"WORLD_SIZE": "2"})


def test_global_batch_must_divide_over_the_ranks():
    assert Context(rank=1, world=4, backend="gloo").rank_batch(32) == 8
    with pytest.raises(SystemExit, match="global batch and must divide evenly over 3 processes"):
        Context(world=3, backend="gloo").rank_batch(32)


def test_batch_size_help_says_it_is_global(capsys):
    from htr.cli import main as cli

    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "global batch, over all processes" in text and "WORLD_SIZE" in text and "--dist-timeout" in text


# --- torchrun jobs -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ranks_hold_equal_parameters_after_every_epoch(jobs):
    from htr.model import load_checkpoint

    for epoch in (1, 2):
        a, b = (torch.load(jobs["two"] / f"rank{r}_epoch{epoch}.pt") for r in (0, 1))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"epoch {epoch}: {k} differs between ranks"
    saved = load_checkpoint(jobs["two"] / "out" / "last.pt")["state_dict"]
    assert all(torch.equal(saved[k], a[k]) for k in a), "last.pt is not the ranks' model"
    first = torch.load(jobs["two"] / "rank0_epoch1.pt")
    assert any(not torch.equal(first[k], a[k]) for k in a), "the model did not train"


@pytest.mark.slow
def test_rank_shards_are_disjoint_and_make_the_one_process_batches(jobs):
    r0, r1 = ranks(jobs["two"], 2)
    (one,) = ranks(jobs["one"], 1)
    perm = one["indices"][0]  # the 1-process sampler: the epoch's whole permutation
    assert sorted(perm) == list(range(len(perm)))
    for epoch, (a, b) in enumerate(zip(r0["indices"], r1["indices"])):
        assert len(a) == len(b) == len(perm) // 2
        assert_partition([a, b], perm[: 2 * len(a)] if epoch == 0 else sorted(a + b))
    a, b = r0["indices"][0], r1["indices"][0]
    for step in range(len(perm) // 8):  # global batch 8 = 4 per rank: the slices of one 1-process batch
        assert sorted(a[4 * step : 4 * step + 4] + b[4 * step : 4 * step + 4]) == sorted(perm[8 * step : 8 * step + 8])


@pytest.mark.slow
def test_two_rank_loss_equals_one_process_loss_of_the_same_global_batch(jobs):
    r0, r1 = ranks(jobs["two"], 2)
    (one,) = ranks(jobs["one"], 1)
    two_loss = [(a + b) / 2 for a, b in zip(r0["loss"], r1["loss"])]  # DDP's loss: the mean of the ranks'
    ref = one["loss"]
    assert len(ref) == LOSS_STEPS and len(two_loss) > LOSS_STEPS
    for step, (x, y) in enumerate(zip(two_loss, ref)):
        assert abs(x - y) <= LOSS_RTOL * y, f"step {step + 1}: 2 ranks {x:.4f} vs 1 process {y:.4f}"
    # the tolerance tells batches apart: consecutive 1-process steps differ by more than it
    assert max(abs(x - y) / y for x, y in zip(ref, ref[1:])) > 3 * LOSS_RTOL


@pytest.mark.slow
def test_pseudo_labelling_is_sharded_and_gathered(jobs, scans):
    from htr.model import load_checkpoint

    files = sorted(p.name for p in scans.iterdir())
    r0, r1 = ranks(jobs["two"], 2)
    (one,) = ranks(jobs["one"], 1)
    assert set(r0["pseudo"][0]) <= set(files[0::2]) and set(r1["pseudo"][0]) <= set(files[1::2])
    assert sorted(r0["pseudo"][0] + r1["pseudo"][0]) == sorted(one["pseudo"][0]) and one["pseudo"][0]
    two = load_checkpoint(jobs["two"] / "out" / "last.pt")["pseudo"]
    assert two == load_checkpoint(jobs["one"] / "out" / "last.pt")["pseudo"]  # same list, same order


@pytest.mark.slow
def test_rank_zero_alone_logs_saves_and_serves(jobs):
    out = jobs["out2"]
    history = (jobs["two"] / "out" / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["epoch"] for h in history] == [1, 2]  # both ranks appending would give 4 lines
    assert out.count("epoch 2: val loss") == 1 and out.count("epoch 2/2:   0%") == 1  # one log, one bar
    assert f"metrics on http://127.0.0.1:{jobs['port']}/metrics" in out  # a second exporter would fail to bind
    assert "--batch-size 8 is the global batch = 2 x 4 per rank; --lr 0.001 is for that global batch" in out
    assert "gloo, 2 on this node, 1 torch threads each" in out


@pytest.mark.slow
def test_resume_as_two_static_nodes_on_loopback_equals_the_straight_run(jobs, common, tmp_path):
    """Two torchrun agents (--nnodes 2, static rendezvous at 127.0.0.1) stop after epoch 1, then resume."""
    from htr.model import load_checkpoint

    steps = len(ranks(jobs["two"], 2)[0]["indices"][0]) // 4
    out = tmp_path / "out"

    def two_nodes(*extra: str) -> None:
        port = free_port()
        nodes = [torchrun(tmp_path / f"node{k}", [*common, "--threads", "1", "--metrics-port", "0", "--no-progress",
                                                  "--out", str(out), *extra],
                          "--nnodes", "2", "--node_rank", str(k), "--nproc_per_node", "1",
                          "--master_addr", "127.0.0.1", "--master_port", str(port)) for k in (0, 1)]
        for k, node in enumerate(nodes):
            rc, text = finish(node)
            assert rc == 0, f"node {k}: {text[-4000:]}"

    two_nodes("--max-steps", str(steps))
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    two_nodes("--resume")
    a, b = load_checkpoint(jobs["two"] / "out" / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["step"] == b["step"] == 2 * steps and len(b["rng_ranks"]) == 2
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


@pytest.mark.slow
def test_a_crashing_rank_ends_the_job_with_its_error(common, tmp_path):
    t0 = time.monotonic()
    rc, out = finish(torchrun(tmp_path, [*common, "--metrics-port", "0", "--no-progress", "--out", str(tmp_path / "o")],
                              "--standalone", "--nproc_per_node", "2", env={"HTR_TEST_CRASH_RANK": "1"},
                              timeout=CRASH_BOUND_S))
    elapsed = time.monotonic() - t0
    assert rc != 0, out[-4000:]
    root_cause = out.rpartition("Root Cause (first observed failure)")[2]  # the agent's summary
    assert "rank      : 1" in root_cause and CRASH_MESSAGE in root_cause, out[-4000:]
    assert elapsed < CRASH_BOUND_S


@pytest.mark.slow
def test_a_hanging_rank_is_given_up_after_the_dist_timeout(common, tmp_path):
    t0 = time.monotonic()
    rc, out = finish(torchrun(tmp_path, [*common, "--dist-timeout", str(HANG_TIMEOUT_S), "--metrics-port", "0",
                                         "--no-progress", "--out", str(tmp_path / "o")],
                              "--standalone", "--nproc_per_node", "2", env={"HTR_TEST_HANG_RANK": "1"},
                              timeout=HANG_BOUND_S))
    elapsed = time.monotonic() - t0
    assert rc != 0, out[-4000:]
    root_cause = out.rpartition("Root Cause (first observed failure)")[2]
    assert f"Timed out waiting {HANG_TIMEOUT_S * 1000}ms" in root_cause, out[-4000:]  # rank 0 gave up on rank 1
    assert HANG_TIMEOUT_S < elapsed < HANG_BOUND_S


if __name__ == "__main__":  # a torchrun rank: tests/test_distributed.py RECORD train ARGS...
    sys.exit(_worker(Path(sys.argv[1]), sys.argv[2:]))
