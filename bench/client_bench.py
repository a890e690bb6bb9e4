"""``htr.client`` throughput: preprocessing on the client vs on the server, gRPC vs HTTP, with and without
system shared memory.

Builds the CPU model repository from the checkpoint (``htr.export.build``, TorchScript), starts the
bundled tritonserver on free loopback ports, and times ``HTRClient.recognize_many`` over ``--images`` real
labelled images (encoded bytes held in memory, so disk reads are not timed) for each of the eight
configurations, interleaved so that machine noise hits all alike. Client and server share this machine's
cores: a configuration that moves work to the client is not free here, it only moves it.

- ``preprocess server``: JPEG bytes go to the ensemble ``htr`` (decode + preprocess + CRNN + CTC there);
- ``preprocess client``: decode, preprocess and CTC decoding in this process, pixels (float32
  1 x H x W per image) to ``crnn``: more bytes on the wire, fewer server steps (no python-backend hops
  for preprocess and ctc_decode).

Every configuration must return the same texts; the script fails otherwise.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _common import ROOT, interleaved_timings, machine, read_labelled_blobs, require_data, stamp, write_json

from htr.paths import default_data_dir

CONFIGS = [(pre, proto, shm) for pre in ("server", "client") for proto in ("grpc", "http") for shm in (False, True)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt")
    ap.add_argument("--data", type=Path, default=default_data_dir())
    ap.add_argument("--images", type=int, default=256, help="real labelled images per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (recognize_many)")
    ap.add_argument("--batch-size", type=int, default=16, help="images per request")
    ap.add_argument("--torch-threads", type=int, default=1, help="intra-op threads of the served crnn")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from htr.client import HTRClient
    from htr.export.build import ExportError, build_repository
    from htr.export.repository import RepositoryOptions
    from htr.serve import ServerOptions, TritonServer

    blobs = read_labelled_blobs(require_data(args.data))
    blobs = (blobs * (args.images // max(1, len(blobs)) + 1))[: args.images]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            build_repository(args.checkpoint, tmp / "repo", options=RepositoryOptions(cpu_engine="torchscript",
                                                                                          crnn_threads=args.torch_threads),
                             formats="torchscript", engines_dir=tmp / "engines", data=args.data, parity_images=8)
        except ExportError as e:
            sys.exit(f"error: {e}")
        server = TritonServer(tmp / "repo", ServerOptions.with_free_ports(log_file=tmp / "triton.log"))
        server.start(ready_timeout=180)
        clients = {}
        try:
            for pre, proto, shm in CONFIGS:
                url = server.url_grpc if proto == "grpc" else server.http_endpoint
                clients[(pre, proto, shm)] = HTRClient(url, proto, preprocess=pre, shared_memory=shm,
                                                       batch_size=args.batch_size)
            texts = {}

            def runner(key):
                def run():
                    preds = clients[key].recognize_many(blobs, concurrency=args.concurrency)
                    texts[key] = [p.text for p in preds]
                    assert all(p.ok for p in preds), [p.error for p in preds if not p.ok][:3]
                return run

            times = interleaved_timings({key: runner(key) for key in CONFIGS}, args.repeats, warmup=1)
            reference = texts[CONFIGS[0]]
            differ = [key for key in CONFIGS if texts[key] != reference]
            if differ:
                sys.exit(f"error: configurations {differ} returned other texts than {CONFIGS[0]}")
            cfg = clients[CONFIGS[0]].config
        finally:
            for client in clients.values():
                client.close()
            server.stop()

    pixel_bytes = cfg.input.height * cfg.input.width * 4
    jpeg_bytes = statistics.mean(len(b) for b in blobs)
    print(f"\nhtr.client throughput: {args.images} real labelled images per run, batches of {args.batch_size}, "
          f"{args.concurrency} requests in flight, median of {args.repeats} runs (interleaved)\n"
          f"{machine()}, {stamp()}; server and client on the same machine, loopback\n")
    print("| preprocess | protocol | shared memory | bytes in / image | images/s | min-max images/s |")
    print("|---|---|---|---|---|---|")
    for key in CONFIGS:
        pre, proto, shm = key
        rates = [args.images / t for t in times[key]]
        sent = jpeg_bytes if pre == "server" else pixel_bytes
        results[f"{pre}/{proto}/{'shm' if shm else 'socket'}"] = {
            "images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "bytes_per_image": sent}
        print(f"| {pre} | {proto} | {'yes' if shm else 'no'} | {sent / 1024:,.1f} KiB | {statistics.median(rates):,.0f} "
              f"| {min(rates):,.0f}-{max(rates):,.0f} |")
    print("\nall eight configurations returned identical texts")
    write_json(args.json, {"machine": machine(), "date": stamp(), "args": vars(args) | {
        "checkpoint": str(args.checkpoint), "data": str(args.data)}, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
