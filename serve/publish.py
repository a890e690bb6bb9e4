"""``htr publish``: roll a checkpoint out to a running server as the next version of its repository, and back.

Example::

    htr publish --checkpoint runs/finetune/best.pt        # model_repository/, the server on 127.0.0.1:8001
    htr publish --rollback                                # back to the version served before

From Python (what ``htr publish`` runs, and what the tests call)::

    from htr.serve.publish import publish, rollback

    result = publish("runs/finetune/best.pt", "model_repository", "127.0.0.1:8001", admin_key)
    rollback("model_repository", "127.0.0.1:8001", admin_key)

**Every model gets the new version.** ``htr serve`` runs explicit model control, and every model's config keeps
only its newest version (``version_policy { latest { num_versions: 1 } }``). The checkpoint is exported with the
served repository's own settings (``htr.export.repository.read_options``: engine, threads, batching, limits) as
version N+1 of all four models, ``preprocess``, ``crnn``, ``ctc_decode`` and the ensemble ``htr``. ``crnn`` and
``ctc_decode`` need it (weights, decoding); the ensemble needs it so that its answers say which model read them
(the response's ``model_version`` is the ensemble's: with ``crnn`` alone moving on, old and new reads would both
say version 1); ``preprocess`` follows so that one number names one set of files. One load request for the
ensemble then does the switch: Triton polls an ensemble's steps with it, loads each changed model's new version
beside the old one (which keeps answering meanwhile), makes the new ones ready, and unloads the old ones once the
requests in them are done. A client sees no failed request; for a moment an ensemble request may meet a new
``crnn`` and an old ``ctc_decode``, which read the same alphabet.

**What must hold before anything changes.** The server answers, takes the admin key, and serves this very folder
(each model's ready version is its newest on disk). The checkpoint reads the same alphabet and input as the
served model (refused unless ``force``: with another input size or alphabet, requests caught between old and new
stages fail). The export passes its parity check against PyTorch. Any failure up to here leaves the server and the
folder as they were.

**If the new version does not come up** (Triton keeps serving a model's old version when its new one fails to
load, so the load request alone does not say), its folders are taken out again, the old configs put back, and
the old version loaded again, by way of a copy of it under the failed number, which clears Triton's record of
the failed load (until then ``/v2/health/ready`` answers 503): :class:`PublishError` says why, the old version
still answers and the server is ready.

**Configs per version.** A model's ``config.pbtxt`` is shared by its versions, and a new checkpoint may change it
(precision, decoding parameters). Each version folder keeps the config it was served with (:data:`VERSION_CONFIG`);
``rollback`` deletes the newest version's folders, puts the previous version's config back and loads the ensemble
the same way.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from htr.paths import ROOT
from htr.runtime.contract import CONFIDENCE, CONFIG_KEY, CRNN, CTC_DECODE, ENSEMBLE, ERROR, IMAGE_BYTES, MODELS, TEXT

from .cli import DEFAULT_REPOSITORY, default_log_file
from .errors import PublishError
from .server import ADMIN_HEADER

#: In each version folder: the config.pbtxt that version is served with (Triton reads only the model's own).
VERSION_CONFIG = "version-config.pbtxt"
#: What ``htr publish`` connects to by default: ``htr serve``'s gRPC port, and the admin key file it writes.
DEFAULT_URL = "127.0.0.1:8001"
ADMIN_KEY_ENV = "HTR_ADMIN_KEY"
#: The image the new version reads once it is live (its answer must come from the new version).
PROBE_IMAGE = ROOT / "samples" / "SAMPLE_03.jpg"
#: Input settings a new checkpoint must share with the served model (a different network shape is fine).
SAME_INPUT = ("alphabet", "blank", "input")


@dataclass
class PublishResult:
    """What a publish or a rollback did: the served version before and after, and how long the switch took."""

    repository: Path
    url: str
    old_version: int
    new_version: int
    answering_version: int  # the ensemble version that answered the probe afterwards
    probe_text: str  # what it read on PROBE_IMAGE
    switch_s: float  # from the load request to the new version answering
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# the running server, through the gRPC repository API


class LiveServer:
    """The server at ``url`` (gRPC ``host:port``): its repository index and load requests carry the admin key.
    :meth:`check` fails with a one-line :class:`PublishError` when it is unreachable or refuses the key."""

    def __init__(self, url: str, admin_key: str, timeout_s: float = 10.0):
        import tritonclient.grpc as grpcclient

        self.url, self.timeout_s = url, timeout_s
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(url)
        self._headers = {f"triton-grpc-protocol-{ADMIN_HEADER}": admin_key}

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn):
        from tritonclient.utils import InferenceServerException

        try:
            return fn()
        except InferenceServerException as e:
            message = e.message() or str(e)
            if "restricted" in message:
                raise PublishError(f"the server at {self.url} refused the admin key for the model-repository API: "
                                   "pass the key file `htr serve` printed at start (--admin-key-file) or set "
                                   f"${ADMIN_KEY_ENV}") from None
            if "StatusCode.UNAVAILABLE" in str(e.status()) or "DEADLINE_EXCEEDED" in str(e.status()):
                raise PublishError(f"no Triton server answers at {self.url} ({message.strip()[:200]}): is "
                                   "`htr serve` running, and is --url its gRPC host:port?") from None
            raise PublishError(f"the server at {self.url} refused to {what}: {message.strip()[:500]}") from None

    def check(self) -> None:
        self._call("say it is live", lambda: self._client.is_server_live(client_timeout=self.timeout_s))
        self.index()

    def index(self) -> dict[str, dict[int, tuple[str, str]]]:
        """model -> version -> (state, reason), as the repository index says."""
        raw = self._call("list its repository", lambda: self._client.get_model_repository_index(
            headers=self._headers, as_json=True, client_timeout=self.timeout_s))
        out: dict[str, dict[int, tuple[str, str]]] = {}
        for m in raw.get("models", []):
            if str(m.get("version", "")).isdigit():
                out.setdefault(m["name"], {})[int(m["version"])] = (m.get("state", ""), m.get("reason", ""))
        return out

    def ready_versions(self) -> dict[str, list[int]]:
        return {name: sorted(v for v, (state, _) in versions.items() if state == "READY")
                for name, versions in self.index().items()}

    def config_parameter(self, model: str, key: str) -> str | None:
        raw = self._call(f"send the config of {model!r}", lambda: self._client.get_model_config(
            model, as_json=True, client_timeout=self.timeout_s))
        return raw.get("config", {}).get("parameters", {}).get(key, {}).get("string_value")

    def load(self, model: str, timeout_s: float) -> None:
        self._call(f"load {model!r}", lambda: self._client.load_model(model, headers=self._headers,
                                                                      client_timeout=timeout_s))

    def probe(self, image: bytes) -> tuple[int, str, str]:
        """One request to the ensemble without a version: (the version that answered, TEXT, ERROR)."""
        import numpy as np

        x = self._grpc.InferInput(IMAGE_BYTES, [1, 1], "BYTES")
        x.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        outputs = [self._grpc.InferRequestedOutput(n) for n in (TEXT, CONFIDENCE, ERROR)]
        r = self._call("read the probe image", lambda: self._client.infer(ENSEMBLE, [x], outputs=outputs,
                                                                         client_timeout=60))
        text, error = (r.as_numpy(n).reshape(-1)[0] for n in (TEXT, ERROR))
        return int(r.get_response(as_json=True)["model_version"]), text.decode(), error.decode()


# ---------------------------------------------------------------------------------------------------
# the repository folder


def folder_versions(repository: Path) -> dict[str, list[int]]:
    from htr.export.repository import versions

    return {name: versions(repository / name) for name in MODELS}


def _served_version(live: LiveServer, repository: Path) -> int:
    """The one version every model of the set serves, checked against the folder: that version must be each
    model's newest on disk (otherwise the server serves another folder, or the folder changed since the load)."""
    ready, on_disk = live.ready_versions(), folder_versions(repository)
    missing = [name for name in MODELS if not on_disk[name]]
    if missing:
        raise PublishError(f"{repository} is not a model repository of this project (no version folders of "
                           f"{', '.join(missing)}): pass the folder `htr serve --repository` serves")
    served = {name: ready.get(name, []) for name in MODELS}
    if any(len(v) != 1 for v in served.values()):
        raise PublishError(f"the server at {live.url} does not serve one version of each model "
                           f"({_describe(served)}): is it serving this repository, with explicit model control?")
    numbers = {v[0] for v in served.values()}
    newest = {name: on_disk[name][-1] for name in MODELS}
    if any(served[name][0] != newest[name] for name in MODELS) or len(numbers) != 1:
        raise PublishError(f"the server at {live.url} serves {_describe(served)} but the newest versions in "
                           f"{repository} are {_describe(newest)}: pass the folder the server serves (a version "
                           "copied in by hand and not loaded yet: load it or remove it first)")
    return numbers.pop()


def _describe(versions: dict) -> str:
    return ", ".join(f"{name} {v if not isinstance(v, list) else '/'.join(map(str, v)) or 'none'}"
                     for name, v in versions.items())


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _snapshot(repository: Path, version: int) -> None:
    """Keep each model's current config beside its files (the first publish: versions ``htr export`` wrote)."""
    for name in MODELS:
        kept = repository / name / str(version) / VERSION_CONFIG
        if not kept.is_file():
            shutil.copyfile(repository / name / "config.pbtxt", kept)


def _restore_configs(repository: Path, version: int) -> None:
    for name in MODELS:
        _write_atomically(repository / name / "config.pbtxt",
                          (repository / name / str(version) / VERSION_CONFIG).read_bytes())


def _move_versions(source: Path, target: Path, version: int) -> None:
    """``source/<model>/<version>`` -> ``target/<model>/<version>`` for every model (renames: one file system)."""
    for name in MODELS:
        (target / name).mkdir(parents=True, exist_ok=True)
        os.replace(source / name / str(version), target / name / str(version))


def _decoding(config_file: Path) -> str:
    """How a ``ctc_decode`` config decodes, in a few words (greedy, beam + name model, ...)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    params = text_format.Parse(config_file.read_text(), mc.ModelConfig()).parameters
    kind = params["decoder"].string_value if "decoder" in params else "greedy"
    extras = [w for w, key in (("name model", "name_model_file"), ("lexicon", "lexicon_file")) if key in params]
    return kind + (f" + {' + '.join(extras)}" if extras else "")


# ---------------------------------------------------------------------------------------------------
# switching versions


def _switch(live: LiveServer, version: int, previous: int, timeout_s: float, say) -> tuple[float, int, str]:
    """Load the ensemble (and with it every changed step), wait until every model serves ``version`` alone and
    the ensemble answers from it: (seconds, answering version, probe text). PublishError when it does not."""
    t0 = time.monotonic()
    live.load(ENSEMBLE, timeout_s)
    deadline = t0 + timeout_s
    while True:
        index = live.index()
        states = {name: index.get(name, {}) for name in MODELS}
        failed = {name: v[version] for name, v in states.items() if v.get(version, ("", ""))[0] == "UNAVAILABLE"}
        if failed:
            reasons = "; ".join(f"{name} {version}: {' '.join(reason.split()) or 'UNAVAILABLE'}"  # one line
                                for name, (_, reason) in failed.items())
            raise PublishError(f"version {version} did not load ({reasons[:800]})")
        new_ready = all(v.get(version, ("", ""))[0] == "READY" for v in states.values())
        others_gone = all(s not in ("READY", "UNLOADING") for v in states.values()
                          for n, (s, _) in v.items() if n != version)
        if new_ready and others_gone:
            break
        if time.monotonic() > deadline:
            raise PublishError(f"version {version} was not the only one ready after {timeout_s:g} s: "
                               + _describe({n: [f"{k}:{s}" for k, (s, _) in sorted(v.items())]
                                            for n, v in states.items()}))
        time.sleep(0.1)
    answering, text, error = live.probe(PROBE_IMAGE.read_bytes())
    if answering != version or error:
        raise PublishError(f"after the switch the ensemble answered from version {answering} (wanted {version})"
                           + (f" with the error {error!r}" if error else ""))
    seconds = time.monotonic() - t0
    say(f"version {version} ready and answering {seconds:.1f} s after the load request (probe "
        f"{PROBE_IMAGE.name}: {text!r}); version {previous} unloaded once its requests were done")
    return seconds, answering, text


def _take_out(live: LiveServer, repository: Path, tmp: Path, new: int, old: int, timeout_s: float) -> None:
    """After a new version failed: every model back on ``old``, and the server ready again.

    Triton keeps a failed load in its model states, and with it ``/v2/health/ready`` answers 503 (strict
    readiness) although every model serves: a load balancer or the container's health check would take the server
    out. A working copy of ``old`` loaded under the failed number replaces that record; taking the copy out again
    leaves ``new`` merely "unloaded", as after any switch. Two switches, each without a failed request."""
    _move_versions(repository, tmp / "failed", new)
    _restore_configs(repository, old)
    for name in MODELS:  # staged beside, renamed in: Triton never sees half a folder
        shutil.copytree(repository / name / str(old), tmp / "copy" / name / str(new))
    _move_versions(tmp / "copy", repository, new)
    _switch(live, new, old, timeout_s, lambda line: None)
    _move_versions(repository, tmp / "copy", new)
    _switch(live, old, new, timeout_s, lambda line: None)


def publish(checkpoint: str | Path, repository: str | Path, url: str = DEFAULT_URL, admin_key: str = "", *,
            force: bool = False, precision: str | None = None, data: str | Path | None = None,
            parity_images: int = 64, timeout_s: float = 300.0,
            progress: Callable[[str], object] | None = print) -> PublishResult:
    """Export ``checkpoint`` as the next version of the served ``repository`` and switch the server at ``url``
    (gRPC, explicit model control, ``admin_key``) to it; see the module docstring.

    Args:
        precision: of the CPU ONNX Runtime ``crnn`` (``htr.export.build``): None keeps the served one's (FP32
            stays FP32; INT8 becomes ``auto``, INT8 when the new model passes the accuracy gate, else FP32).
        force: publish a checkpoint whose alphabet or input differs from the served model's.
        data, parity_images: the export's parity check (``build_repository``).
        timeout_s: for the load and for the new version to be the only one ready.

    Raises:
        PublishError: with a one-line reason; the server and the folder are as they were (see the module
            docstring for the one case where a new version was loaded and taken out again).
    """
    from htr.config import HTRConfig
    from htr.export.build import CPU_SERVED_FORMAT, ExportError, build_repository
    from htr.export.repository import read_options
    from htr.model import load_checkpoint

    say = progress or (lambda line: None)
    checkpoint, repository = Path(checkpoint), Path(repository).resolve()
    try:
        new_cfg = HTRConfig.from_dict(load_checkpoint(checkpoint)["config"])
    except (FileNotFoundError, ValueError) as e:
        raise PublishError(str(e)) from None
    live = LiveServer(url, admin_key)
    try:
        live.check()
        old = _served_version(live, repository)
        served_cfg = HTRConfig.from_json(live.config_parameter(CRNN, CONFIG_KEY) or "{}")
        differs = [k for k in SAME_INPUT if getattr(served_cfg, k) != getattr(new_cfg, k)]
        if differs:
            what = "; ".join(f"{k}: served {getattr(served_cfg, k)!r}, checkpoint {getattr(new_cfg, k)!r}"
                             for k in differs)
            if not force:
                raise PublishError(f"{checkpoint} does not read what the served model reads ({what}): requests "
                                   "caught between old and new stages may fail; --force publishes it anyway")
            say(f"WARNING: {what}; publishing anyway (--force): requests during the switch may fail")
        new = max(v for vs in folder_versions(repository).values() for v in vs) + 1
        options = read_options(repository)
        prec = precision or ("fp32" if options.precision == "fp32" else "auto")
        options = replace(options, version=new, precision="fp32", decoder=None, name_model=None)
        engine = options.cpu_engine if options.target == "cpu" else options.gpu_engine
        say(f"{live.url} serves version {old} of {repository}; exporting {checkpoint} as version {new} "
            f"(the served settings: {options.target} {engine}, precision {prec})")
        with tempfile.TemporaryDirectory(prefix=f".{repository.name}.publish-", dir=repository.parent) as tmp:
            staged = Path(tmp) / "repository"
            try:
                formats = CPU_SERVED_FORMAT[options.cpu_engine] if options.target == "cpu" else None  # None: all
                build_repository(checkpoint, staged, options=options, formats=formats, data=data,
                                 engines_dir=Path(tmp) / "engines", parity_images=parity_images, precision=prec,
                                 progress=say)
            except (ExportError, OSError, ValueError) as e:  # parity, precision gate, unreadable parity images
                raise PublishError(f"the export failed, nothing changed on the server: {e}") from None
            notes = [f"decoding: version {old} {_decoding(repository / CTC_DECODE / 'config.pbtxt')}, version {new} "
                     f"{_decoding(staged / CTC_DECODE / 'config.pbtxt')}"]
            say(notes[0])
            _snapshot(repository, old)
            for name in MODELS:
                shutil.copyfile(staged / name / "config.pbtxt", staged / name / str(new) / VERSION_CONFIG)
            _move_versions(staged, repository, new)
            for name in MODELS:
                _write_atomically(repository / name / "config.pbtxt", (staged / name / "config.pbtxt").read_bytes())
            say(f"loading version {new} ({', '.join(MODELS)}) through the ensemble")
            try:
                seconds, answering, text = _switch(live, new, old, timeout_s, say)
            except PublishError as e:
                say(f"taking version {new} out again: {e}")
                _take_out(live, repository, Path(tmp), new, old, timeout_s)
                raise PublishError(f"{e}; version {old} serves again") from None
    finally:
        live.close()
    return PublishResult(repository, url, old, new, answering, text, seconds, checkpoint, notes)


def rollback(repository: str | Path, url: str = DEFAULT_URL, admin_key: str = "", *, timeout_s: float = 300.0,
             progress: Callable[[str], object] | None = print) -> PublishResult:
    """Go back to the version served before the current one: the current version's folders are deleted, the
    previous version's configs put back, and the ensemble loaded as :func:`publish` does. PublishError (nothing
    changed) when there is no earlier version, or when the server does not serve ``repository``."""
    say = progress or (lambda line: None)
    repository = Path(repository).resolve()
    live = LiveServer(url, admin_key)
    try:
        live.check()
        current = _served_version(live, repository)
        earlier = {name: [v for v in vs if v < current] for name, vs in folder_versions(repository).items()}
        previous = {max(vs) if vs else None for vs in earlier.values()}
        if None in previous or len(previous) != 1:
            raise PublishError(f"nothing to roll back to: {repository} holds no earlier version of every model than "
                               f"the served {current} ({_describe(earlier)})")
        previous = previous.pop()
        if not all((repository / name / str(previous) / VERSION_CONFIG).is_file() for name in MODELS):
            raise PublishError(f"version {previous} in {repository} keeps no {VERSION_CONFIG} (it was not replaced by "
                               "htr publish): roll back by hand")
        say(f"{live.url} serves version {current} of {repository}; going back to version {previous}")
        with tempfile.TemporaryDirectory(prefix=f".{repository.name}.rollback-", dir=repository.parent) as tmp:
            _move_versions(repository, Path(tmp), current)
            _restore_configs(repository, previous)
            try:
                seconds, answering, text = _switch(live, previous, current, timeout_s, say)
            except PublishError as e:
                say(f"putting version {current} back: {e}")
                _move_versions(Path(tmp), repository, current)
                _restore_configs(repository, current)
                _switch(live, current, previous, timeout_s, say)
                raise PublishError(f"{e}; version {current} serves again") from None
        say(f"deleted version {current}'s folders (htr publish the checkpoint again to bring it back)")
    finally:
        live.close()
    return PublishResult(repository, url, current, previous, answering, text, seconds)


# ---------------------------------------------------------------------------------------------------
# the command line


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("publish", help="roll a checkpoint out to the running server as its next version (--rollback: "
                                       "back)", description=__doc__, formatter_class=formatter_class)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path, help="the checkpoint to serve next (e.g. runs/finetune/best.pt)")
    what.add_argument("--rollback", action="store_true", help="go back to the version served before this one")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="the folder the server serves")
    p.add_argument("--url", default=DEFAULT_URL, help="the server's gRPC host:port")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help=f"file holding the admin key of the model-repository API (default: ${ADMIN_KEY_ENV}, else "
                        f"{default_log_file(8000).with_suffix('.admin-key').relative_to(ROOT)}, what `htr serve` "
                        "writes on its default ports)")
    p.add_argument("--force", action="store_true",
                   help="publish a checkpoint whose alphabet or input size differs from the served model's")
    p.add_argument("--precision", choices=("auto", "fp32", "int8"), default=None,
                   help="of the CPU ONNX Runtime crnn (default: the served one's; INT8 is re-checked as auto)")
    p.add_argument("--data", type=Path, default=None,
                   help="Kaggle-layout folder whose labelled images drive the parity check (default: $HTR_DATA or "
                        "the shared folder)")
    p.add_argument("--parity-images", type=int, default=64, help="real images in the export's parity check")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for the new version to load and answer")
    p.set_defaults(func=run)


def admin_key(key_file: Path | None) -> str:
    """The key: ``key_file``, else ``$HTR_ADMIN_KEY``, else the file ``htr serve`` writes on its default ports."""
    if key_file is None and os.environ.get(ADMIN_KEY_ENV):
        return os.environ[ADMIN_KEY_ENV].strip()
    path = key_file or default_log_file(8000).with_suffix(".admin-key")
    try:
        return path.read_text().strip()
    except OSError as e:
        raise PublishError(f"cannot read the admin key from {path} ({e.strerror}): pass the file `htr serve` printed "
                           f"at start (--admin-key-file), or set ${ADMIN_KEY_ENV}") from None


def run(args) -> int:
    def say(line: str) -> None:
        print(f"htr publish: {line}", flush=True)

    try:
        key = admin_key(args.admin_key_file)
        if args.rollback:
            r = rollback(args.repository, args.url, key, timeout_s=args.timeout, progress=say)
        else:
            r = publish(args.checkpoint, args.repository, args.url, key, force=args.force, precision=args.precision,
                        data=args.data, parity_images=args.parity_images, timeout_s=args.timeout, progress=say)
    except PublishError as e:
        print(f"htr publish: error: {e}", file=sys.stderr, flush=True)
        return 1
    say(f"{args.url} now serves version {r.new_version} (was {r.old_version})")
    return 0
