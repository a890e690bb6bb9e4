"""The review loop against real servers: images read by the real ``htr serve`` (conftest ``triton``), the doubtful
reads pushed to a real Label Studio (the PyPI package, from ``.venv-labelstudio``, on a free loopback port with a
temporary data folder), annotated through Label Studio's API as the labelling page does, viewed in headless
Chromium, and pulled back into the Kaggle layout that training reads.

The first tests need no server: the review selection, the whole-or-nothing folders and the annotation -> label
rules on Label Studio's export JSON.
"""
from __future__ import annotations

import base64
import csv
import time
from pathlib import Path

import pytest

from htr.cli import main as htr_main
from htr.config import normalize_label
from htr.labelling.errors import LabellingError
from htr.labelling.pull import ALPHABET, EMPTY, SKIPPED, UNFINISHED, labels_from_export
from htr.labelling.review import Read, read_review, select_doubtful, write_review
from htr.labelling.studio import IMAGE, KEY, TEXT, data_url, decode_data_url, image_key

N_IMAGES = 8
PROJECT = "htr review (test)"


# --- no server ----------------------------------------------------------------------------------------------------

def test_select_doubtful_keeps_the_least_confident_first_and_caps():
    reads = [(Path(f"/x/{n}"), n, t, c) for n, t, c in
             [("a.jpg", "ANNE", 0.9), ("b.jpg", "BOB", 0.2), ("c.jpg", "", 0.05), ("d.jpg", "DAN", 0.5),
              ("e.jpg", "EVE", 0.2), ("f.jpg", "FAY", 0.99)]]
    kept = select_doubtful(reads, below=0.95)
    assert [r.filename for r in kept] == ["c.jpg", "b.jpg", "e.jpg", "d.jpg", "a.jpg"]  # ties by name
    assert [r.filename for r in select_doubtful(reads, below=0.95, limit=2)] == ["c.jpg", "b.jpg"]
    assert select_doubtful(reads, below=0.01) == []
    assert kept[0] == Read("c.jpg", "", 0.05, "/x/c.jpg")
    with pytest.raises(ValueError):
        select_doubtful(reads, below=0)


def test_select_doubtful_makes_names_flat_and_unique():
    reads = [(Path("/a/x.jpg"), "x.jpg", "A", 0.1), (Path("/b/x.jpg"), "x.jpg", "B", 0.2),
             (Path("/c/sub/y.jpg"), "sub/y.jpg", "C", 0.3)]
    assert [r.filename for r in select_doubtful(reads, below=1)] == ["x.jpg", "x-2.jpg", "sub_y.jpg"]


def test_review_folder_is_written_whole_or_not_at_all(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for n in ("a.jpg", "b.jpg"):
        (src / n).write_bytes(n.encode())
    out = tmp_path / "review"
    good = [Read("a.jpg", "ANNE", 0.1, str(src / "a.jpg")), Read("b.jpg", "BOB", 0.2, str(src / "b.jpg"))]
    write_review(out, good, {"model_version": "htr:1"})
    reads, meta = read_review(out)
    assert reads == good and meta["model_version"] == "htr:1" and meta["kept"] == 2
    assert (out / "images" / "b.jpg").read_bytes() == b"b.jpg"

    # a failure half-way (second image missing) leaves the earlier folder as it was, and nothing beside it
    bad = [good[0], Read("gone.jpg", "X", 0.3, str(src / "gone.jpg"))]
    with pytest.raises(LabellingError, match="gone.jpg"):
        write_review(out, bad, {})
    assert read_review(out)[0] == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["review", "src"]
    with pytest.raises(LabellingError, match="gone.jpg"):
        write_review(tmp_path / "fresh", bad, {})
    assert not (tmp_path / "fresh").exists()

    # a folder that is not an earlier output is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LabellingError, match="not empty"):
        write_review(tmp_path / "mine", good, {})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _annotation(text=None, cancelled=False, at="2026-01-01T00:00:00Z", id=1):
    result = [] if text is None else [{"from_name": TEXT, "to_name": IMAGE, "type": "textarea",
                                       "value": {"text": [text]}}]
    return {"id": id, "result": result, "was_cancelled": cancelled, "created_at": at, "updated_at": at}


def _task(id, name, annotations, image=b"\xff\xd8jpeg"):
    return {"id": id, "data": {IMAGE: data_url(image, name), "filename": name, KEY: image_key(image)},
            "annotations": annotations, "predictions": []}


def test_labels_from_export_normalises_and_says_why_it_skips():
    tasks = [
        _task(1, "a.jpg", [_annotation("  jérôme  o\u2019neil ")]),                       # normalised
        _task(2, "b.jpg", [_annotation("WRONG", at="2026-01-01T00:00:00Z", id=5),           # newest wins
                           _annotation("MARIE-CLAIRE", at="2026-01-02T00:00:00Z", id=6)]),
        _task(3, "c.jpg", [_annotation("PAUL", id=7), _annotation(cancelled=True, id=8, at="2026-02-01T00:00:00Z")]),
        _task(4, "d.jpg", [_annotation(cancelled=True)]),                                    # skipped
        _task(5, "e.jpg", []),                                                               # not annotated
        _task(6, "f.jpg", [_annotation("   ")]),                                             # empty
        _task(7, "g.jpg", [_annotation("unreadable")]),                                      # a non-label
        _task(8, "h.jpg", [_annotation("ANNE2")]),                                           # outside the alphabet
        _task(9, "a.jpg", [_annotation("LEA")], image=b"other"),                             # same name, other image
    ]
    labels, skipped = labels_from_export(tasks)
    assert [(lb.filename, lb.identity) for lb in labels] == [
        ("a.jpg", "JEROME O'NEIL"), ("b.jpg", "MARIE-CLAIRE"), ("c.jpg", "PAUL"), ("a-task9.jpg", "LEA")]
    assert labels[0].image == b"\xff\xd8jpeg" and labels[-1].image == b"other"
    assert list(skipped) == [UNFINISHED, SKIPPED, EMPTY, ALPHABET]  # report order
    assert skipped[UNFINISHED] == ["e.jpg"] and skipped[SKIPPED] == ["d.jpg"]
    assert skipped[EMPTY] == ["f.jpg", "g.jpg ('unreadable')"]
    assert skipped[ALPHABET] == ["h.jpg ('ANNE2' has '2')"]


def test_data_urls_round_trip():
    assert decode_data_url(data_url(b"\x00\x01jpeg", "x.jpg")) == b"\x00\x01jpeg"
    assert data_url(b"x", "y.png").startswith("data:image/png;base64,")
    assert decode_data_url("/data/upload/1/x.jpg") is None and decode_data_url("data:image/jpeg;base64,@@") is None


# --- a real htr serve and a real Label Studio ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def truth(kaggle_dir):
    """The first N real labelled images and their labels."""
    with open(kaggle_dir / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if normalize_label(r["IDENTITY"])][:N_IMAGES]
    return {r["FILENAME"]: normalize_label(r["IDENTITY"]) for r in rows}


@pytest.fixture(scope="module")
def review_dir(triton, kaggle_dir, truth, tmp_path_factory):
    out = tmp_path_factory.mktemp("review") / "review"
    paths = [str(kaggle_dir / "labelled" / name) for name in truth]
    rc = htr_main(["recognize", "--url", triton.url_grpc, "--no-progress", "--review-below", "1.01",
                   "--review-out", str(out), *paths])
    assert rc == 0
    return out


def _run(argv, capsys):
    rc = htr_main(argv)
    captured = capsys.readouterr()
    return rc, captured.err


def _ls(ls, *args):
    return ["--url", ls.url, "--token", ls.token, *args]


@pytest.fixture(scope="module")
def pushed(label_studio, review_dir):
    """The review folder pushed once; (project id, tasks by filename, reads by filename)."""
    from htr.labelling.studio import Studio

    assert htr_main(["label", "push", str(review_dir), *_ls(label_studio, "--project", PROJECT)]) == 0
    studio = Studio(label_studio.url, label_studio.token)
    project = studio.find_project(PROJECT)
    tasks = {t["data"]["filename"]: t for t in studio.tasks(project.id)}
    reads = {r.filename: r for r in read_review(review_dir)[0]}
    return project.id, tasks, reads


@pytest.mark.slow
def test_review_folder_holds_every_read_least_confident_first(review_dir, kaggle_dir, truth):
    reads, meta = read_review(review_dir)
    assert sorted(r.filename for r in reads) == sorted(truth)
    assert [r.confidence for r in reads] == sorted(r.confidence for r in reads)
    for r in reads:
        assert Path(r.source) == kaggle_dir / "labelled" / r.filename
        assert (review_dir / "images" / r.filename).read_bytes() == Path(r.source).read_bytes()
        assert 0 <= r.confidence <= 1
    assert meta["model"] == "htr" and meta["model_version"].startswith("htr:") and meta["read"] == N_IMAGES


@pytest.mark.slow
def test_review_threshold_and_cap(triton, kaggle_dir, truth, review_dir, tmp_path, capsys):
    confs = sorted(r.confidence for r in read_review(review_dir)[0])
    paths = [str(kaggle_dir / "labelled" / name) for name in truth]
    below = (confs[3] + confs[4]) / 2 if confs[3] < confs[4] else confs[4] + 1e-9
    rc, err = _run(["recognize", "--url", triton.url_grpc, "--no-progress", "--review-below", f"{below:.9f}",
                    "--review-out", str(tmp_path / "half"), *paths], capsys)
    assert rc == 0 and "review: kept" in err
    assert [r.confidence for r in read_review(tmp_path / "half")[0]] == pytest.approx(
        [c for c in confs if c < below], abs=1e-5)
    rc, err = _run(["recognize", "--url", triton.url_grpc, "--no-progress", "--review-below", "1.01",
                    "--review-max", "3", "--review-out", str(tmp_path / "three"), *paths], capsys)
    assert rc == 0 and "--review-max" in err
    assert [r.confidence for r in read_review(tmp_path / "three")[0]] == pytest.approx(confs[:3], abs=1e-5)
    # a folder that is not a review folder is refused before anything is read
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    rc, err = _run(["recognize", "--url", triton.url_grpc, "--review-below", "0.5", "--review-out",
                    str(tmp_path / "mine"), *paths], capsys)
    assert rc == 2 and "not empty" in err and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.slow
def test_push_makes_one_task_per_read_with_its_prediction_and_never_twice(pushed, review_dir, label_studio, capsys):
    project_id, tasks, reads = pushed
    assert sorted(tasks) == sorted(reads)
    for name, task in tasks.items():
        read = reads[name]
        assert decode_data_url(task["data"][IMAGE]) == (review_dir / "images" / name).read_bytes()
        (pred,) = _predictions(label_studio, task["id"])  # the export lists prediction ids only
        assert pred["score"] == pytest.approx(read.confidence, abs=1e-6)
        assert pred["model_version"].startswith("htr:")
        texts = [t for item in pred["result"] for t in item["value"]["text"]]
        assert texts == ([read.text] if read.text else [])
    rc, err = _run(["label", "push", str(review_dir), *_ls(label_studio, "--project", PROJECT)], capsys)
    assert rc == 0 and f"0 task(s) added, {len(reads)} already there" in err, err
    assert _task_count(label_studio, project_id) == len(reads)


def _api(ls, method, path, body=None):
    return ls.api(method, path, body)


def _predictions(ls, task_id):
    return _api(ls, "GET", f"/api/predictions/?task={task_id}")[1]


def _task_count(ls, project_id):
    return _api(ls, "GET", f"/api/projects/{project_id}/")[1]["task_number"]


def _submit(ls, project_id, task, text=None, cancelled=False):
    """As the labelling page sends it on Submit (or Skip: was_cancelled): LocalLabelStudio.annotate."""
    answer = ls.annotate(project_id, task, text, cancelled)
    assert answer["was_cancelled"] == cancelled, answer


@pytest.mark.slow
def test_pull_writes_the_corrections_in_the_kaggle_layout(pushed, label_studio, truth, tmp_path, capsys):
    from htr.data import read_kaggle

    project_id, tasks, reads = pushed
    names = sorted(tasks, key=lambda n: tasks[n]["id"])
    accented = truth[names[3]].lower().replace("e", "é", 1)
    plan = {names[0]: truth[names[0]], names[1]: truth[names[1]], names[2]: truth[names[2]],  # as the truth
            names[3]: f"  {accented}  ",                            # lower case, accents, spaces: normalised
            names[4]: truth[names[4]].replace(" ", "  "),
            names[5]: truth[names[5]] + "2"}                        # a character outside the alphabet
    for name, text in plan.items():
        _submit(label_studio, project_id, tasks[name], text)
    _submit(label_studio, project_id, tasks[names[6]], cancelled=True)   # Skip
    # names[7] stays unannotated (the screenshot test opens it)

    out = tmp_path / "corrected"
    t0 = time.monotonic()
    rc, err = _run(["label", "pull", "--out", str(out), *_ls(label_studio, "--project", PROJECT)], capsys)
    assert rc == 0, err
    print(f"pull: {time.monotonic() - t0:.2f} s")
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["FILENAME", "IDENTITY"]
    assert dict(rows[1:]) == {n: truth[n] for n in names[:5]}
    for name in names[:5]:
        assert (out / "labelled" / name).read_bytes() == Path(reads[name].source).read_bytes()
    samples, _ = read_kaggle(out / "labels.csv")  # what training reads
    assert sorted((s.path.name, s.text) for s in samples) == sorted((n, truth[n]) for n in names[:5])
    assert f"skipped 1 task: characters outside the alphabet: {names[5]} ({plan[names[5]]!r} has '2')" in err
    assert f"skipped 1 task: skipped (cancelled) by the labeller: {names[6]}" in err
    assert f"skipped 1 task: not annotated yet: {names[7]}" in err
    assert f"wrote 5 label(s) of {N_IMAGES} task(s)" in err
    # pulling again replaces the earlier pull whole
    assert _run(["label", "pull", "--out", str(out), *_ls(label_studio, "--project", PROJECT)], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrected"]


@pytest.mark.slow
def test_labelling_view_shows_the_image_and_the_models_read(pushed, label_studio, tmp_path):
    """Headless Chromium, logged in as the test user, on the labelling view of a task not annotated yet."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    project_id, tasks, reads = pushed
    name = max(tasks, key=lambda n: tasks[n]["id"])  # the one the pull test leaves unannotated
    read, task = reads[name], tasks[name]
    assert read.text, "the model read nothing on this image: pick another"
    for exe in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(exe).is_file():
            pytest.fail(f"{exe} not found: `make labelstudio` installs Debian's chromium + chromium-driver",
                        pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))  # no driver download
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{label_studio.url}/user/login")
        driver.find_element(By.NAME, "email").send_keys(label_studio.email)
        driver.find_element(By.NAME, "password").send_keys(label_studio.password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(driver, 30).until(lambda d: "/user/login" not in d.current_url)

        driver.get(f"{label_studio.url}/projects/{project_id}/data?task={task['id']}")
        image_css, text_css = f"img[alt='{IMAGE}']", f"[name^='{TEXT}:']"   # the Image tag; the TextArea's line
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "const i = document.querySelector(arguments[0]);"
            "return !!(i && i.complete && i.naturalWidth > 0 && document.querySelector(arguments[1]));",
            image_css, text_css))
        shot = tmp_path / "labelling-view.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # the image element shows the task's image: the bytes behind its src are the pushed file's
        shown = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(document.querySelector(arguments[0]).src).then(r => r.blob()).then(b => {"
            "  const f = new FileReader(); f.onload = () => done(f.result); f.readAsDataURL(b); });", image_css)
        assert base64.b64decode(shown.split(",", 1)[1]) == decode_data_url(task["data"][IMAGE])
        # the text field holds the model's read, pre-filled from the prediction
        assert driver.find_element(By.CSS_SELECTOR, text_css).text.strip() == read.text
    finally:
        driver.quit()


# --- bad input: one clear line, exit 1, nothing written ----------------------------------------------------------

@pytest.mark.slow
def test_unreachable_label_studio_names_the_url(review_dir, tmp_path, capsys):
    from htr.serve.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    for argv in (["label", "push", str(review_dir)], ["label", "pull", "--out", str(tmp_path / "out")]):
        t0 = time.monotonic()
        rc, err = _run([*argv, "--url", url, "--token", "x" * 40], capsys)
        assert rc == 1 and time.monotonic() - t0 < 10
        (line,) = err.strip().splitlines()
        assert "unreachable" in line and url in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_wrong_token_is_refused_with_the_status(label_studio, review_dir, tmp_path, capsys):
    for argv in (["label", "push", str(review_dir)], ["label", "pull", "--out", str(tmp_path / "out")]):
        rc, err = _run([*argv, "--url", label_studio.url, "--token", "0" * 40, "--project", PROJECT], capsys)
        (line,) = err.strip().splitlines()
        assert rc == 1 and "refused the API token (401" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_personal_access_token_works_as_well(label_studio, capsys):
    """The token Account & Settings makes in Label Studio 1.17+ (a JWT refresh token), not only the legacy one."""
    status, answer = _api(label_studio, "POST", "/api/token/", {})
    assert status == 201 and answer["token"].count(".") == 2  # a JWT
    rc, err = _run(["label", "pull", "--out", "/nonexistent/never-written", "--url", label_studio.url,
                    "--token", answer["token"], "--project", "nope"], capsys)
    assert rc == 1 and "no project titled 'nope'" in err, err  # past the token check
    assert not Path("/nonexistent").exists()


@pytest.mark.slow
def test_empty_or_missing_project_has_nothing_to_pull(label_studio, tmp_path, capsys):
    from htr.labelling.studio import Studio

    Studio(label_studio.url, label_studio.token).ensure_project("htr empty", "htr:1")
    rc, err = _run(["label", "pull", "--out", str(tmp_path / "out"), *_ls(label_studio, "--project", "htr empty")],
                   capsys)
    (line,) = err.strip().splitlines()
    assert rc == 1 and "has no tasks: nothing to pull" in line, line
    rc, err = _run(["label", "pull", "--out", str(tmp_path / "out"), *_ls(label_studio, "--project", "nope")], capsys)
    assert rc == 1 and "no project titled 'nope'" in err
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    # an existing folder that is not an earlier pull is left alone
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    rc, err = _run(["label", "pull", "--out", str(tmp_path / "mine"), *_ls(label_studio, "--project", PROJECT)],
                   capsys)
    assert rc == 1 and "not empty" in err and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
