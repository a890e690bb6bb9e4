"""htr.client against the real tritonserver serving the CPU repository (conftest ``triton``): no mocks.

Every served text is compared with the offline ``OfflineRecognizer`` on real labelled images, for each input
kind, protocol, preprocessing side, with and without shared memory, sync and async.
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from htr.cli import main as htr_main
from htr.client import (AsyncHTRClient, ConfigMismatchError, HTRClient, InferenceTimeoutError, ModelNotReadyError,
                        ServerUnreachableError, image_files)
from htr.data import read_kaggle
from htr.offline import OfflineRecognizer
from htr.serve import ServerOptions, TritonServer, free_port

pytestmark = pytest.mark.slow  # a real tritonserver (conftest ``triton``)

N = 32  # images compared per configuration


@pytest.fixture(scope="module")
def labelled(kaggle_dir):
    samples, _ = read_kaggle(kaggle_dir / "labels.csv")
    assert len(samples) >= 150
    return [s.path for s in samples[:150]]


@pytest.fixture(scope="module")
def offline(checkpoint, labelled):
    """(text, confidence) of the offline pipeline (what ``htr eval`` predicts: the checkpoint's own decoding, which
    the server's ctc_decode runs) for the first 150 images."""
    return OfflineRecognizer(checkpoint).predict_files(labelled)


@pytest.fixture(scope="module")
def offline_greedy(checkpoint, labelled):
    """The same with greedy decoding: what ``preprocess="client"`` reads (it decodes best-path locally; the name
    model lives with the server's ctc_decode)."""
    return OfflineRecognizer(checkpoint, decoder="greedy").predict_files(labelled)


@pytest.fixture(scope="module")
def expected(offline, offline_greedy):
    return {"server": offline, "client": offline_greedy}


@pytest.fixture(scope="module")
def kinds(labelled):
    """The same N images as paths, encoded bytes, decoded BGR arrays and PIL (RGB) images."""
    from htr.preprocess import decode_images

    paths = labelled[:N]
    blobs = [p.read_bytes() for p in paths]
    arrays = decode_images(blobs)
    assert arrays[0].ndim == 3 and arrays[0].shape[2] == 3
    pils = [Image.fromarray(np.ascontiguousarray(a[..., ::-1])) for a in arrays]
    return {"path": paths, "str": [str(p) for p in paths], "bytes": blobs, "ndarray": arrays, "pil": pils}


@pytest.fixture
def corrupt_folder(tmp_path, labelled):
    """Six real images, a corrupt .jpg, a truncated .png and a text file (not an image: ignored)."""
    for p in labelled[:6]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    png = cv2.imencode(".png", cv2.imread(str(labelled[6])))[1].tobytes()
    (tmp_path / "half.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def url_of(triton, protocol):
    return triton.url_grpc if protocol == "grpc" else triton.http_endpoint


def texts(preds):
    return [p.text for p in preds]


def assert_matches_offline(preds, offline, start=0):
    want = offline[start : start + len(preds)]
    assert all(p.ok for p in preds), [p.error for p in preds if not p.ok][:3]
    assert texts(preds) == [t for t, _ in want]
    assert np.allclose([p.confidence for p in preds], [c for _, c in want], atol=1e-4)


def server_regions(triton) -> set[str]:
    status = grpcclient.InferenceServerClient(triton.url_grpc).get_system_shared_memory_status(as_json=True)
    return set(status.get("regions", {}))


def request_count(triton, model) -> int:
    stats = grpcclient.InferenceServerClient(triton.url_grpc).get_inference_statistics(model, as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


# --- every input kind, protocol and preprocessing side reads the images as the offline pipeline -------


@pytest.mark.parametrize("preprocess", ["server", "client"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_input_kind_gives_the_offline_text(triton, kinds, expected, protocol, preprocess):
    offline = expected[preprocess]
    with HTRClient(url_of(triton, protocol), protocol, preprocess=preprocess) as client:
        assert client.is_ready()
        assert client.max_batch_size == 64
        for kind, items in kinds.items():
            preds = client.recognize(items)
            assert_matches_offline(preds, offline)
            if kind in ("path", "str"):
                assert [p.source for p in preds] == [str(p) for p in kinds["path"]]
            else:
                assert all(p.source is None for p in preds)


def served_name_model(checkpoint):
    """The name model the repository of ``checkpoint`` serves (the one inside the checkpoint)."""
    from htr.ctc_decoder import checkpoint_decoding
    from htr.model import load_checkpoint

    spec, name_model = checkpoint_decoding(load_checkpoint(checkpoint))
    assert spec.decoder == "beam" and name_model is not None, "the shipped model is served with its name model"
    return name_model


def test_client_side_decoding_as_served_reads_the_server_text(triton, checkpoint, kinds, expected):
    """``preprocess="client", decoder="served"``: the client reads ctc_decode's decoding (beam, name-model weight
    and bonus) from its config and decodes locally with the same name model: the ensemble's text, not greedy's.
    Another name model (fingerprint), none, or a name model with another decoder are refused clearly."""
    from htr.preprocess import NameModel

    name_model = served_name_model(checkpoint)
    assert [t for t, _ in expected["server"]] != [t for t, _ in expected["client"]], "the test needs a difference"
    for protocol in ("grpc", "http"):
        with HTRClient(url_of(triton, protocol), protocol, preprocess="client", decoder="served",
                       name_model=name_model) as client:
            assert client.codec.codec.describe().startswith("beam 10 + name model")
            assert_matches_offline(client.recognize(kinds["ndarray"]), expected["server"])

    async def run():
        async with AsyncHTRClient(triton.url_grpc, preprocess="client", decoder="served",
                                  name_model=name_model) as client:
            return await client.recognize(kinds["path"])

    assert_matches_offline(asyncio.run(run()), expected["server"])
    other = NameModel.train(["MARTIN", "LEA"], name_model.alphabet, order=3)
    with pytest.raises(ConfigMismatchError, match="name model fingerprint"):
        HTRClient(triton.url_grpc, preprocess="client", decoder="served", name_model=other)
    with pytest.raises(ConfigMismatchError, match="pass name_model="):
        HTRClient(triton.url_grpc, preprocess="client", decoder="served")
    with pytest.raises(ValueError, match="name_model is for decoder='served'"):
        HTRClient(triton.url_grpc, preprocess="client", name_model=name_model, connect=False)


def test_client_reads_the_config_from_the_server(triton, checkpoint):
    from htr.model import load_checkpoint

    want = load_checkpoint(checkpoint)["config"]
    for preprocess in ("server", "client"):
        with HTRClient(triton.url_grpc, preprocess=preprocess) as client:
            assert client.config.to_dict() == want
            assert client.max_batch_size == 64
            assert client.served.name == ("htr" if preprocess == "server" else "crnn")


@pytest.mark.parametrize("preprocess", ["server", "client"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_gives_the_same_result_and_is_released(triton, kinds, expected, protocol, preprocess):
    offline = expected[preprocess]
    before = server_regions(triton)
    client = HTRClient(url_of(triton, protocol), protocol, preprocess=preprocess, shared_memory=True)
    with client:
        assert_matches_offline(client.recognize(kinds["path"], batch_size=16), offline)
        ours = {r.name for r in client.slots.regions()}
        keys = [r.key for r in client.slots.regions()]
        want_roles = {"bytes"} if preprocess == "server" else {"pixels", "logprobs"}
        assert {n.rsplit("-", 2)[1] for n in ours} == want_roles
        assert ours <= server_regions(triton) - before  # registered once, still there between calls
        assert_matches_offline(client.recognize(kinds["ndarray"], batch_size=16), offline)
        assert {r.name for r in client.slots.regions()} == ours  # reused, not registered again
        assert all(Path("/dev/shm", k.lstrip("/")).exists() for k in keys)
    assert not (server_regions(triton) & ours), "regions still registered after close()"
    assert not any(Path("/dev/shm", k.lstrip("/")).exists() for k in keys), "shm files left after close()"


def test_shared_memory_bytes_region_grows_for_large_requests(triton, kinds):
    big = [cv2.resize(a, None, fx=8, fy=8, interpolation=cv2.INTER_LINEAR) for a in kinds["ndarray"][:16]]  # ~2 MiB of PNG
    with HTRClient(triton.url_grpc) as plain:
        want = texts(plain.recognize(big))
    with HTRClient(triton.url_grpc, shared_memory=True) as client:
        first = texts(client.recognize(kinds["bytes"][:2]))
        small = {r.name: r.size for r in client.slots.regions()}
        assert texts(client.recognize(big)) == want
        grown = {r.name: r.size for r in client.slots.regions()}
        assert len(grown) == 1 and max(grown.values()) > max(small.values()) and set(grown) != set(small)
        assert set(small).isdisjoint(server_regions(triton))  # the small one was unregistered
        assert texts(client.recognize(kinds["bytes"][:2])) == first


# --- failures: typed, quick, with what to do ---------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_down_is_unreachable_quickly(protocol):
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ServerUnreachableError) as info:
        HTRClient(url, protocol, retries=2, backoff_s=0.05)
    assert time.monotonic() - t0 < 15  # bounded retries, not the 60 s inference timeout
    assert info.value.attempts == 3 and url in str(info.value) and "htr serve" in str(info.value)
    client = HTRClient(url, protocol, connect=False)
    assert client.is_ready() is False
    client.close()


def test_missing_model_is_model_not_ready(triton):
    for protocol in ("grpc", "http"):
        # with the admin key the error lists what the server has (the repository index is key-protected)
        with pytest.raises(ModelNotReadyError) as info:
            HTRClient(url_of(triton, protocol), protocol, model="no_such_model", headers=triton.admin_headers)
        assert info.value.available.get("htr") == "READY"
        assert "no_such_model" in str(info.value) and "htr (READY)" in str(info.value)
        with pytest.raises(ModelNotReadyError) as info:  # without it: the same error, no listing
            HTRClient(url_of(triton, protocol), protocol, model="no_such_model")
        assert info.value.available == {} and "no_such_model" in str(info.value)


def test_model_not_loaded_is_model_not_ready(cpu_repository, tmp_path):
    """A second server that knows the repository but loaded nothing (explicit model control)."""
    server = TritonServer(cpu_repository, ServerOptions.with_free_ports(
        model_control="explicit", log_file=tmp_path / "explicit.log", load_models=()))
    with server:
        with pytest.raises(ModelNotReadyError) as info:
            HTRClient(server.url_grpc, retries=0, headers=server.admin_headers)
        assert info.value.available == {m: "NOT LOADED" for m in ("htr", "preprocess", "crnn", "ctc_decode")}

        async def aio_connect():
            await AsyncHTRClient(server.url_grpc, retries=0).connect()

        with pytest.raises(ModelNotReadyError):
            asyncio.run(aio_connect())


def test_config_mismatch_says_what_differs(triton):
    with HTRClient(triton.url_grpc) as client:
        alphabet = client.config.alphabet
    with pytest.raises(ConfigMismatchError) as info:
        HTRClient(triton.url_grpc, expected_alphabet=alphabet + "0")
    assert info.value.field == "alphabet" and "server lacks '0'" in str(info.value)
    with pytest.raises(ConfigMismatchError, match="another order"):
        HTRClient(triton.url_grpc, preprocess="client", expected_alphabet=alphabet[::-1])
    with pytest.raises(ConfigMismatchError) as info:
        HTRClient(triton.http_endpoint, "http", model_version="7", headers=triton.admin_headers)
    assert info.value.field == "model version" and info.value.actual == ["1"]
    with pytest.raises(ConfigMismatchError, match="crnn model"):  # pixels sent to the ensemble
        HTRClient(triton.url_grpc, preprocess="client", pixels_model="htr")
    with HTRClient(triton.url_grpc, expected_alphabet=alphabet, model_version="1") as client:
        assert client.served.version == "1"


def test_timeout_is_typed_and_retried(triton, kinds):
    for protocol in ("grpc", "http"):
        with HTRClient(url_of(triton, protocol), protocol, timeout_s=0.001, retries=1, backoff_s=0.01) as client:
            with pytest.raises(InferenceTimeoutError) as info:
                client.recognize(kinds["bytes"])
            assert info.value.attempts == 2 and "--timeout" in str(info.value)


# --- bad images fail alone -----------------------------------------------------------------------------


@pytest.mark.parametrize("preprocess", ["server", "client"])
def test_corrupt_file_in_a_folder_fails_alone(triton, corrupt_folder, labelled, expected, preprocess):
    offline = expected[preprocess]
    files = image_files([corrupt_folder])
    names = [name for _, name in files]
    assert "notes.txt" not in names and len(files) == 8
    items = [path for path, _ in files] + [corrupt_folder / "missing.jpg", 42]
    with HTRClient(triton.url_grpc, preprocess=preprocess) as client:
        preds = client.recognize_many(items, concurrency=2, batch_size=3)
    by_name = dict(zip(names + ["missing.jpg", "42"], preds))
    assert "not a decodable image" in by_name.pop("broken.jpg").error
    assert by_name.pop("half.png").error  # truncated: refused by the decoder, on its own
    assert "cannot read" in by_name.pop("missing.jpg").error
    assert "unsupported input int" in by_name.pop("42").error
    want = {p.name: t for p, (t, _) in zip(labelled[:6], offline)}
    assert {n: p.text for n, p in by_name.items()} == want and all(p.ok for p in by_name.values())


def test_cli_csv_lists_every_file_of_a_folder_with_a_corrupt_one(triton, corrupt_folder, labelled, offline,
                                                                  offline_greedy, checkpoint, capsys):
    rc = htr_main(["recognize", "--url", triton.url_grpc, "--csv", "--no-progress", str(corrupt_folder)])
    out, err = capsys.readouterr()
    assert rc == 1  # two images could not be read: every other one still is, and the exit status says so
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["FILENAME", "IDENTITY", "CONFIDENCE", "ERROR"]
    assert sorted(r["FILENAME"] for r in rows) == sorted(
        [p.name for p in labelled[:6]] + ["broken.jpg", "half.png"])
    want = {p.name: t for p, (t, _) in zip(labelled[:6], offline)}
    for r in rows:
        if r["FILENAME"] in want:
            assert (r["IDENTITY"], r["ERROR"]) == (want[r["FILENAME"]], "")
        else:
            assert r["IDENTITY"] == "" and r["ERROR"]
    assert "6 of 8 images recognised" in err and "broken.jpg" in err

    out_file = corrupt_folder / "out" / "preds.json"
    out_file.parent.mkdir()
    npz = served_name_model(checkpoint).save(corrupt_folder / "out" / "names_lm.npz")
    for decoder, want in (("served", offline), ("greedy", offline_greedy)):
        rc = htr_main(["recognize", "--url", triton.http_endpoint, "--protocol", "http", "--preprocess", "client",
                       "--decoder", decoder, "--name-model", str(npz), "--json", "--output", str(out_file),
                       str(corrupt_folder / "broken.jpg"), str(labelled[0])])
        assert rc == 1
        got = json.loads(out_file.read_text())
        assert [g["file"] for g in got] == ["broken.jpg", labelled[0].name]
        assert got[0]["error"] and got[1]["text"] == want[0][0] and got[1]["error"] is None
    rc = htr_main(["recognize", "--url", triton.url_grpc, "--preprocess", "client", "--name-model",
                   str(corrupt_folder / "missing.npz"), str(labelled[0])])
    assert rc == 2 and "missing.npz: no such file" in capsys.readouterr().err

    rc = htr_main(["recognize", "--url", triton.url_grpc, str(labelled[1]), str(corrupt_folder / "broken.jpg")])
    out, err = capsys.readouterr()  # the default output: a table
    lines = out.splitlines()
    assert rc == 1 and lines[0].split() == ["FILE", "TEXT", "CONFIDENCE", "ERROR"] and len(lines) == 3
    assert lines[1].startswith(labelled[1].name) and f"  {offline[1][0]}  " in lines[1]
    assert lines[2].startswith("broken.jpg") and "not a decodable image" in lines[2]


def test_cli_server_down_exits_non_zero_with_a_clear_message(corrupt_folder, capsys):
    rc = htr_main(["recognize", "--url", f"127.0.0.1:{free_port()}", "--retries", "0", str(corrupt_folder)])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert "cannot reach the Triton server" in err and "htr serve" in err


# --- batching and concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("preprocess", ["server", "client"])
def test_requests_are_split_at_max_batch_size(triton, labelled, expected, preprocess, settled_count):
    offline = expected[preprocess]
    model = "htr" if preprocess == "server" else "crnn"
    with HTRClient(triton.url_grpc, preprocess=preprocess) as client:
        assert client.max_batch_size == 64
        before = request_count(triton, model)
        preds = client.recognize(labelled)  # 150 images: 64 + 64 + 22
        assert settled_count(lambda: request_count(triton, model), before + 3) - before == 3
    assert_matches_offline(preds, offline)
    # one request of 65 is refused by the server: the split is what makes the call above work
    inp = grpcclient.InferInput("IMAGE_BYTES", [65, 1], "BYTES")
    inp.set_data_from_numpy(np.array([b"x"] * 65, dtype=np.object_).reshape(65, 1))
    with pytest.raises(InferenceServerException, match="batch-size must be <= 64"):
        grpcclient.InferenceServerClient(triton.url_grpc).infer("htr", [inp])


def test_async_client_and_recognize_many_give_the_same_results(triton, labelled, offline, offline_greedy):
    items = labelled[:100]

    async def run():
        async with AsyncHTRClient(triton.url_grpc) as client:
            one = await client.recognize(items)
            done = []
            many = await client.recognize_many(items, concurrency=4, batch_size=16, progress=done.append)
            assert sum(done) == len(items) and len(done) == 7
        async with AsyncHTRClient(triton.url_grpc, preprocess="client", shared_memory=True) as client:
            shm = await client.recognize_many(items, concurrency=3, batch_size=16)
            assert 2 <= len(client.slots.regions()) <= 2 * 3  # a slot (pixels + logprobs) per request in flight
        return one, many, shm

    one, many, shm = asyncio.run(run())
    for preds, want in ((one, offline), (many, offline), (shm, offline_greedy)):
        assert_matches_offline(preds, want)
    for protocol in ("grpc", "http"):
        done = []
        with HTRClient(url_of(triton, protocol), protocol, shared_memory=protocol == "http") as client:
            preds = client.recognize_many(items, concurrency=3, batch_size=16, progress=done.append)
        assert_matches_offline(preds, offline)
        assert sum(done) == len(items)


def test_served_csv_is_scored_like_htr_eval(triton, kaggle_dir, checkpoint, tmp_path, capsys):
    """htr recognize --csv on the labelled folder, then htr eval --served: the same figures as offline eval."""
    from htr.cli import main as cli

    served = tmp_path / "served.csv"
    assert cli(["recognize", "--url", triton.url_grpc, "--csv", "--output", str(served), "--no-progress",
                str(kaggle_dir / "labelled")]) == 0
    capsys.readouterr()
    common = ["--labels", str(kaggle_dir / "labels.csv"), "--split", "eval", "--json"]
    assert cli(["eval", "--served", str(served), *common]) == 0
    via_server = json.loads(capsys.readouterr().out)
    assert cli(["eval", "--checkpoint", str(checkpoint), *common]) == 0
    offline = json.loads(capsys.readouterr().out)
    assert via_server["missing"] == 0 and via_server["n"] == offline["n"] > 200
    for key in ("exact_match", "cer", "wer", "correct_chars"):
        assert via_server[key] == pytest.approx(offline[key], abs=1e-9), key


def test_cli_exit_status_is_0_when_every_image_is_read_and_1_for_a_missing_one(triton, labelled, tmp_path, capsys):
    assert htr_main(["recognize", "--url", triton.url_grpc, "--no-progress", str(labelled[0]), str(labelled[1])]) == 0
    rc = htr_main(["recognize", "--url", triton.url_grpc, "--no-progress", str(labelled[0]),
                   str(tmp_path / "no-such-folder")])
    out, err = capsys.readouterr()
    assert rc == 1 and "1 of 2 images recognised" in err and "no-such-folder" in err
