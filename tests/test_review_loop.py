"""The review loop closed, end to end, against real servers (issue 19): a real ``htr serve`` (explicit model control,
an admin key, a private copy of the CPU repository) reads a folder, the doubtful reads go to a real Label Studio,
annotations are submitted through its API as the labelling page sends them, pulled back, a few fine-tuning steps
run on them, and ``htr publish`` rolls the new checkpoint out as version 2 under a Locust load (zero failed
requests), then rolls it back.

Before that, what ``htr publish`` refuses (each with one line, nothing changed on the server or in the folder), and
``htr eval`` comparing two checkpoints in one table.
"""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from htr.cli import main as htr_main
from htr.runtime.contract import ENSEMBLE, MODELS
from htr.serve.publish import PublishError, folder_versions, publish, rollback
from htr.testing.server import copy_repository, start_server

pytestmark = pytest.mark.slow

N_IMAGES = 10
PROJECT = "htr review loop (test)"
ADMIN_KEY = "review-loop-admin-key"


@pytest.fixture(scope="module")
def live(cpu_repository, tmp_path_factory):
    """``htr serve``'s way of serving (explicit model control, stub healing, an admin key) on a private copy of the
    CPU repository, which publish and rollback change."""
    work = tmp_path_factory.mktemp("review-loop-server")
    repo = copy_repository(cpu_repository, work)
    server = start_server(repo, work / "tritonserver.log", model_control="explicit", heal_stubs=True,
                          admin_key=ADMIN_KEY)
    yield server
    server.stop()


def _served(server) -> dict[str, list[int]]:
    """model -> its READY versions, from the repository index."""
    states: dict[str, list[int]] = {}
    for e in server.repository_index():
        if e.get("state") == "READY":
            states.setdefault(e["name"], []).append(int(e["version"]))
    return {name: sorted(v) for name, v in states.items()}


def _unchanged(server, before_index, before_files):
    assert server.is_ready(timeout=5), "/v2/health/ready does not answer 200"
    assert _served(server) == before_index
    assert folder_versions(server.repository) == before_files
    assert sorted(p.name for p in server.repository.parent.iterdir() if p.name.startswith(".")) == [], \
        "a staging folder was left beside the repository"


def test_publish_refuses_with_one_line_and_changes_nothing(live, checkpoint, tmp_path, capsys):
    from dataclasses import replace

    from htr.config import HTRConfig
    from htr.model import CRNN as Network, load_checkpoint, save_checkpoint
    from htr.serve import free_port

    index, files = _served(live), folder_versions(live.repository)
    assert index == {name: [1] for name in MODELS}

    def refused(argv, *, key_file=None):
        key_file = key_file or tmp_path / "key"
        if not key_file.exists():
            key_file.write_text(ADMIN_KEY + "\n")
        rc = htr_main(["publish", "--repository", str(live.repository), "--url", live.url_grpc,
                       "--admin-key-file", str(key_file), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and err[0].startswith("htr publish: error: "), err
        _unchanged(live, index, files)
        return err[0]

    t0 = time.monotonic()
    line = refused(["--checkpoint", str(checkpoint), "--url", f"127.0.0.1:{free_port()}"])
    assert "no Triton server answers at 127.0.0.1:" in line and time.monotonic() - t0 < 10
    (tmp_path / "wrong").write_text("not-the-key\n")
    assert "refused the admin key" in refused(["--rollback"], key_file=tmp_path / "wrong")
    assert "nothing to roll back to" in refused(["--rollback"])
    assert "checkpoint not found" in refused(["--checkpoint", str(tmp_path / "none.pt")])

    # another input size: refused before anything is exported
    cfg = HTRConfig.from_dict(load_checkpoint(checkpoint)["config"])
    other = replace(cfg, input=replace(cfg.input, height=cfg.input.height - 16))
    save_checkpoint(tmp_path / "other.pt", Network(other), other)
    line = refused(["--checkpoint", str(tmp_path / "other.pt")])
    assert "does not read what the served model reads" in line and "--force" in line, line

    # an export whose engine does not match PyTorch (NaN weights): refused by the parity check
    ckpt = load_checkpoint(checkpoint)
    ckpt["state_dict"] = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    next(v for k, v in ckpt["state_dict"].items() if k.endswith("weight") and v.is_floating_point()).fill_(float("nan"))
    import torch

    torch.save(ckpt, tmp_path / "nan.pt")
    line = refused(["--checkpoint", str(tmp_path / "nan.pt"), "--parity-images", "4"])
    assert "the export failed, nothing changed on the server" in line and "NaN/inf" in line, line


def test_a_version_that_does_not_load_is_taken_out_again(live, checkpoint, monkeypatch):
    """Triton keeps serving a model's old version when the new one fails to load, and the load request still
    succeeds (the other steps moved on): publish must see it, take the new folders out and load the old set back,
    and leave the server ready (Triton's record of the failed load alone makes /v2/health/ready answer 503)."""
    import htr.export.build as build

    index, files = _served(live), folder_versions(live.repository)
    configs = {name: (live.repository / name / "config.pbtxt").read_bytes() for name in MODELS}
    real_build = build.build_repository

    def build_broken_crnn(checkpoint, repository, **kw):
        report = real_build(checkpoint, repository, **kw)
        model_py = Path(repository) / "crnn" / str(kw["options"].version) / "model.py"
        broken = "def initialize(self, args):\n        raise RuntimeError('broken on purpose')"
        model_py.write_text(model_py.read_text().replace("def initialize(self, args):", broken, 1))
        return report

    monkeypatch.setattr(build, "build_repository", build_broken_crnn)
    wanted = r"version 2 did not load \(crnn 2: .*broken on purpose.*version 1 serves again"
    with pytest.raises(PublishError, match=wanted):
        publish(checkpoint, live.repository, live.url_grpc, ADMIN_KEY, parity_images=4, progress=None)
    _unchanged(live, index, files)
    assert {name: (live.repository / name / "config.pbtxt").read_bytes() for name in MODELS} == configs
    assert _response_version(live) == "1"


def test_eval_compares_checkpoints_on_the_same_images(checkpoint, tiny_kaggle, capsys):
    argv = ["eval", "--checkpoint", str(checkpoint), "--checkpoint", str(checkpoint),
            "--labels", str(tiny_kaggle / "labels.csv"), "--split", "eval"]
    assert htr_main(argv) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| checkpoint | decoding | n | exact match | CER |") and len(table) == 4
    assert table[3].split("|")[6:10] == [" +0.00 pt ", " +0.00 pt ", " 0 ", " 0 "], table[3]
    assert htr_main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["n"] for r in out["rows"]] == [19, 19] and out["split"] == "eval"
    assert out["differences"] == [{"checkpoint": str(checkpoint), "against": str(checkpoint), "fixed": 0,
                                   "broken": 0, "changed_reads": 0, "exact_match_pt": 0.0, "cer_pt": 0.0}]


# --- the loop ---------------------------------------------------------------------------------------------------


def _reads(server, paths):
    from htr.client import HTRClient

    with HTRClient(server.url_grpc, "grpc") as client:
        got = client.recognize([p.read_bytes() for p in paths])
    assert not any(p.error for p in got), [p.error for p in got]
    return [(p.text, p.confidence) for p in got]


def _locust(server, images: Path, reports: Path) -> subprocess.Popen:
    """A Locust run (the project's locustfile, both user classes), bounded by its --run-time; SIGTERM ends it early
    and it still writes its final stats."""
    from htr.loadtest.run import locust_command

    cmd = locust_command(host=server.url_http, grpc_url=server.url_grpc, users=2, spawn_rate=2, run_time="150s",
                         images=images, reports=reports, batch_size=4)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(reports / "locust.err", "wb"))


def test_correct_finetune_publish_under_load_and_roll_back(live, label_studio, checkpoint, kaggle_dir, tiny_kaggle,
                                                           tmp_path, capsys):
    from htr.data import read_kaggle, split_samples
    from htr.labelling.studio import Studio
    from htr.loadtest.run import read_stats, triton_request_counts
    from htr.offline import OfflineRecognizer

    t_start = time.monotonic()
    samples, _ = read_kaggle(kaggle_dir / "labels.csv")
    train_side, _ = split_samples(samples)  # corrections of images the eval split never sees
    folder = tmp_path / "scans"
    folder.mkdir()
    truth = {}
    for s in [s for s in train_side if s.text][:N_IMAGES]:
        (folder / s.path.name).write_bytes(s.path.read_bytes())
        truth[s.path.name] = s.text

    # 1. read the folder through the served model; every read goes to review (threshold above any confidence)
    assert htr_main(["recognize", "--url", live.url_grpc, "--no-progress", "--review-below", "1.01",
                     "--review-out", str(tmp_path / "review"), str(folder)]) == 0
    # 2. push, and a labeller types the true names over the model's reads
    ls = ["--url", label_studio.url, "--token", label_studio.token, "--project", PROJECT]
    assert htr_main(["label", "push", str(tmp_path / "review"), *ls]) == 0
    studio = Studio(label_studio.url, label_studio.token)
    project = studio.find_project(PROJECT)
    tasks = studio.tasks(project.id)
    assert sorted(t["data"]["filename"] for t in tasks) == sorted(truth)
    for task in tasks:
        label_studio.annotate(project.id, task, truth[task["data"]["filename"]].lower())  # normalised on pull
    # 3. pull: the Kaggle layout, and the command that trains on every label
    corrected = tmp_path / "corrected"
    capsys.readouterr()
    assert htr_main(["label", "pull", "--out", str(corrected), *ls]) == 0
    err = capsys.readouterr().err
    data_arg = f"{corrected}/labels.csv:{corrected}/labelled"
    assert f"--data {data_arg}" in err and f"not --real {corrected}" in err, err
    with open(corrected / "labels.csv", newline="") as f:
        assert dict(list(csv.reader(f))[1:]) == truth
    # 4. fine-tune a few steps on the corrections (+ the small real folder's train side as --real)
    run = tmp_path / "finetune"
    assert htr_main(["train", "--init", str(checkpoint), "--data", data_arg, "--real", str(tiny_kaggle),
                     "--max-steps", "3", "--epochs", "1", "--synth", "0", "--real-repeat", "1", "--batch-size", "8",
                     "--metrics-port", "0", "--workers", "0", "--no-progress", "--out", str(run)]) == 0
    assert f"{corrected}/labels.csv: kept {N_IMAGES}," in capsys.readouterr().out  # every correction trained on
    new_ckpt = run / "best.pt"
    t_trained = time.monotonic()

    # 5. publish under a Locust load
    paths = sorted(folder.iterdir())
    old_reads = OfflineRecognizer(checkpoint).predict_files(paths)
    new_reads = OfflineRecognizer(new_ckpt).predict_files(paths)
    assert max(abs(a[1] - b[1]) for a, b in zip(old_reads, new_reads)) > 1e-4, "the fine-tune changed nothing"
    served = _reads(live, paths)
    assert [t for t, _ in served] == [t for t, _ in old_reads]
    np.testing.assert_allclose([c for _, c in served], [c for _, c in old_reads], atol=2e-3)

    reports = tmp_path / "locust"
    reports.mkdir()
    before = triton_request_counts(live.url_metrics)
    locust = _locust(live, folder, reports)
    try:
        deadline = time.monotonic() + 60
        while triton_request_counts(live.url_metrics)["success"] < before["success"] + 10:  # load is running
            assert locust.poll() is None and time.monotonic() < deadline, (reports / "locust.err").read_text()[-2000:]
            time.sleep(0.2)
        t0 = time.monotonic()
        result = publish(new_ckpt, live.repository, live.url_grpc, ADMIN_KEY, parity_images=8)
        publish_s = time.monotonic() - t0
        assert locust.poll() is None, "the load ended before the switch"
        time.sleep(2.0)  # requests to the new version
    finally:
        locust.send_signal(signal.SIGTERM)
        locust.wait(120)  # it stops its users (--stop-timeout 10) and writes its reports: slow on a busy CPU
    stats = read_stats(reports)["total"]
    after = triton_request_counts(live.url_metrics)
    assert stats["requests"] > 20 and stats["failures"] == 0, (reports / "locust.err").read_text()[-2000:]
    assert after["failure"] == before["failure"], "Triton counted failed requests during the switch"

    # 6. the new model answers: version 2 of every model, reading as the new checkpoint reads offline
    assert (result.old_version, result.new_version, result.answering_version) == (1, 2, 2)
    assert _served(live) == {name: [2] for name in MODELS} and live.is_ready(timeout=5)
    served = _reads(live, paths)
    assert [t for t, _ in served] == [t for t, _ in new_reads]
    np.testing.assert_allclose([c for _, c in served], [c for _, c in new_reads], atol=2e-3)
    assert _response_version(live) == "2"

    # 7. roll back: version 1 answers again, as the shipped checkpoint reads
    back = rollback(live.repository, live.url_grpc, ADMIN_KEY)
    assert (back.old_version, back.new_version, back.answering_version) == (2, 1, 1)
    assert _served(live) == {name: [1] for name in MODELS} and live.is_ready(timeout=5)
    assert folder_versions(live.repository) == {name: [1] for name in MODELS}
    served = _reads(live, paths)
    np.testing.assert_allclose([c for _, c in served], [c for _, c in old_reads], atol=2e-3)
    assert not live.heal_events, "the stub watchdog took a version switch for a dead stub"
    print(f"\nreview loop: {time.monotonic() - t_start:.1f} s (to the fine-tuned checkpoint "
          f"{t_trained - t_start:.1f} s); publish {publish_s:.1f} s, switch {result.switch_s:.1f} s, rollback "
          f"{back.switch_s:.1f} s; Locust {stats['requests']} requests, 0 failed")


def _response_version(server) -> str:
    import tritonclient.grpc as grpcclient

    from htr.runtime.contract import IMAGE_BYTES
    from htr.serve.publish import PROBE_IMAGE

    client = grpcclient.InferenceServerClient(server.url_grpc)
    try:
        x = grpcclient.InferInput(IMAGE_BYTES, [1, 1], "BYTES")
        x.set_data_from_numpy(np.array([[PROBE_IMAGE.read_bytes()]], dtype=np.object_))
        return client.infer(ENSEMBLE, [x]).get_response(as_json=True)["model_version"]
    finally:
        client.close()


def test_review_sheets_sample_draw_and_turn_typed_answers_into_labels(tmp_path, kaggle_dir):
    """scripts/review_sheets.py: a seeded sample of the doubtful reads, drawn 20 to a sheet with each read beside
    its scan; the typed answers become a Kaggle-layout CSV (normalised, '?' skipped) that htr.data reads back."""
    import csv as _csv
    import subprocess
    import sys
    from pathlib import Path

    from htr.data import read_kaggle, real_source

    root = Path(__file__).resolve().parents[1]
    files = sorted((kaggle_dir / "unlabelled").glob("*.jpg"))[:25]
    reads = tmp_path / "reads.csv"
    with open(reads, "w", newline="") as f:
        w = _csv.writer(f)
        w.writerow(["FILENAME", "TEXT", "CONFIDENCE", "SOURCE"])
        for i, p in enumerate(files):
            w.writerow([p.name, f"READ{i}", f"{i / 25:.2f}", str(p)])
    cmd = [sys.executable, str(root / "scripts/review_sheets.py"), str(reads), "--below", "0.5", "--count", "30",
           "--out", str(tmp_path / "sheets")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "13 reads in [0, 0.5) on 1 sheets" in done.stdout  # confidences 0.00 .. 0.48
    from PIL import Image

    sheet = Image.open(tmp_path / "sheets" / "sheet00.png")
    assert sheet.height > 13 * 40 and sheet.width > 300
    answers = tmp_path / "answers.txt"
    answers.write_text("".join(f"{i} {'?' if i == 3 else 'Élodie  d’Arc' if i == 0 else 'NAME' + 'ABCDEFGHIJKLM'[i]}\n"
                               for i in range(13)))
    labels = tmp_path / "mine.csv"
    done = subprocess.run([*cmd, "--answers", str(answers), "--labels", str(labels)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "12 labelled, 1 skipped" in done.stdout, done.stderr
    samples, report = read_kaggle(*real_source(f"{labels}:{kaggle_dir / 'unlabelled'}"))
    assert len(samples) == 12 and report.changed == 0 and samples[0].text == "ELODIE D'ARC"
    answers.write_text("0 X\n")
    done = subprocess.run([*cmd, "--answers", str(answers), "--labels", str(labels)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "no answer for 12 rows" in done.stderr
