"""Remote checkpoints against the peers, on the same servers and the same data.

    python bench/remote.py CKPT_DIR [--rounds 3] [--layer encoder.layer.0.]

CKPT_DIR is a torch.distributed.checkpoint directory (bench/make_checkpoint.py).
Starts the test servers (scripts/test-servers.py: moto with authentication on,
nginx, a counting proxy in front of each) and measures, alternating the
contenders in each round:

- save to S3: `checkpack pack CKPT_DIR s3://…` (one object, one multipart
  upload) against s3torchconnector's S3StorageWriter and torch's FsspecWriter
  over s3fs (dcp.save of the same state dict) — requests by type, bytes sent,
  objects created, wall time;
- dcp.save from 2 gloo ranks (each saving half the items):
  checkpack.torch.ArchiveWriter("s3://…") (one object, one upload that both
  ranks fill) against S3StorageWriter (an object per rank, and .metadata);
- full load from S3: checkpack.torch.ArchiveReader("s3://…") against
  S3StorageReader and FsspecReader over s3fs — bytes received, requests, wall
  time (moto reads the whole object for every ranged GET, so times there are moto's);
- partial load from S3 (the tensors whose names start with --layer): bytes
  received and requests;
- full load over HTTP from nginx (no proxy): ArchiveReader("http://…")
  against torch's FsspecReader over fsspec's HTTP filesystem — wall time.

Needs (in the Python running it): torch, checkpack (pip install ./python),
moto[server], s3torchconnector[dcp], s3fs, fsspec, aiohttp; nginx; the release CLI.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import torch
import torch.distributed.checkpoint as dcp

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CLI = os.environ.get("CHECKPACK_CLI", os.path.join(REPO, ".build", "release", "checkpack"))


def proxy(base, what, body=None):
    request = urllib.request.Request(f"{base}/__proxy__/{what}", data=body, method="POST" if body is not None else "GET")
    return urllib.request.urlopen(request).read()


def counted(base, fn):
    proxy(base, "reset", b"")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    stats = json.loads(proxy(base, "stats"))
    return seconds, stats, result


def full_state(ckpt_dir):
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
    return _load_state_dict_from_keys(checkpoint_id=ckpt_dir)


def blank(state, prefix=""):
    return {k: torch.zeros_like(v) for k, v in state.items() if isinstance(v, torch.Tensor) and k.startswith(prefix)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layer", default="model.encoder.layer.0.")
    parser.add_argument("--cases", default="save,ranks,full,partial,http",
                        help="which cases to run: save, ranks (dcp.save from 2 ranks), full, partial (from S3), "
                             "http (full load from nginx)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="checkpack-remote-bench-")
    servers = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "test-servers.py"), "--dir", work,
                                "--env-file", work + "/env"], stdout=subprocess.DEVNULL)
    try:
        while not os.path.exists(work + "/env"):
            if servers.poll() is not None:
                sys.exit("the test servers did not start")
            time.sleep(0.2)
        env = dict(line.split("=", 1) for line in open(work + "/env").read().split())
        run(args, env, work)
    finally:
        servers.terminate()
        servers.wait()
        shutil.rmtree(work, ignore_errors=True)


def run(args, env, work):
    from s3torchconnector import S3ClientConfig
    from s3torchconnector.dcp import S3StorageReader, S3StorageWriter
    from torch.distributed.checkpoint.fsspec_filesystem import FsspecReader, FsspecWriter
    from checkpack.torch import ArchiveReader

    bucket, region, s3proxy = env["CHECKPACK_TEST_S3_BUCKET"], env["CHECKPACK_TEST_S3_REGION"], env["CHECKPACK_TEST_S3_PROXY"]
    os.environ.update(AWS_ACCESS_KEY_ID=env["CHECKPACK_TEST_S3_ACCESS_KEY_ID"],
                      AWS_SECRET_ACCESS_KEY=env["CHECKPACK_TEST_S3_SECRET_ACCESS_KEY"],
                      AWS_REGION=region, AWS_ENDPOINT_URL=s3proxy)
    config = S3ClientConfig(force_path_style=True)
    state = full_state(args.checkpoint)
    size = sum(os.path.getsize(os.path.join(args.checkpoint, f)) for f in os.listdir(args.checkpoint))
    layer = blank(state, args.layer)
    layer_bytes = sum(v.numel() * v.element_size() for v in layer.values())
    print(f"checkpoint: {args.checkpoint}, {size / 1e6:.1f} MB in files, {len(state)} items; "
          f"partial load: {len(layer)} tensors, {layer_bytes / 1e6:.2f} MB under {args.layer!r}")

    # The HTTP contenders: the archive and the directory, both served by nginx.
    archive = os.path.join(work, "ckpt.ckpk")
    subprocess.run([CLI, "pack", args.checkpoint, archive, "--quiet", "--force"], check=True)
    shutil.copy(archive, os.path.join(env["CHECKPACK_TEST_HTTP_ROOT"], "ckpt.ckpk"))
    shutil.copytree(args.checkpoint, os.path.join(env["CHECKPACK_TEST_HTTP_ROOT"], "ckpt"))
    archive_size = os.path.getsize(archive)

    results = {}

    def record(case, who, seconds, stats=None):
        results.setdefault((case, who), []).append((seconds, stats))

    for round_number in range(args.rounds):
        tag = uuid.uuid4().hex[:8]
        ckpk_url = f"s3://{bucket}/bench/{tag}.ckpk"
        s3t_prefix = f"s3://{bucket}/bench/{tag}-s3torch/"
        order = [0, 1] if round_number % 2 == 0 else [1, 0]
        order3 = [0, 1, 2][round_number % 3:] + [0, 1, 2][:round_number % 3]   # three contenders take turns first
        fsspec_prefix = f"s3://{bucket}/bench/{tag}-fsspec/"
        cases = set(args.cases.split(","))
        for who in order3 if cases & {"save", "full", "partial"} else []:
            if who == 0:
                s, st, _ = counted(s3proxy, lambda: subprocess.run([CLI, "pack", args.checkpoint, ckpk_url, "--quiet"], check=True))
                record("save to S3", "checkpack", s, st)
            elif who == 1:
                s, st, _ = counted(s3proxy, lambda: dcp.save(state, storage_writer=S3StorageWriter(region, s3t_prefix, s3client_config=config), no_dist=True))
                record("save to S3", "s3torchconnector", s, st)
            else:
                s, st, _ = counted(s3proxy, lambda: dcp.save(state, storage_writer=FsspecWriter(fsspec_prefix), no_dist=True))
                record("save to S3", "FsspecWriter (s3fs)", s, st)
        for who in order if "ranks" in cases else []:
            name = "checkpack" if who == 0 else "s3torchconnector"
            target = f"s3://{bucket}/bench/{tag}-ranks.ckpk" if who == 0 else f"s3://{bucket}/bench/{tag}-ranks-s3torch/"
            _, st, inner = counted(s3proxy, lambda: save_from_ranks(args.checkpoint, name, target, region, 29700 + round_number * 2 + who))
            record("dcp.save to S3, 2 ranks", name, inner, st)   # dcp.save alone, between barriers (not the processes' start)
        for who in order3 if "full" in cases else []:
            if who == 0:
                s, st, _ = counted(s3proxy, lambda: dcp.load(blank(state), storage_reader=ArchiveReader(ckpk_url), no_dist=True))
                record("full load from S3", "checkpack", s, st)
            elif who == 1:
                s, st, _ = counted(s3proxy, lambda: dcp.load(blank(state), storage_reader=S3StorageReader(region, s3t_prefix, s3client_config=config), no_dist=True))
                record("full load from S3", "s3torchconnector", s, st)
            else:
                s, st, _ = counted(s3proxy, lambda: dcp.load(blank(state), storage_reader=FsspecReader(fsspec_prefix), no_dist=True))
                record("full load from S3", "FsspecReader (s3fs)", s, st)
        for who in order3 if "partial" in cases else []:
            if who == 0:
                s, st, _ = counted(s3proxy, lambda: dcp.load(blank(state, args.layer), storage_reader=ArchiveReader(ckpk_url), no_dist=True))
                record("partial load from S3", "checkpack", s, st)
            elif who == 1:
                s, st, _ = counted(s3proxy, lambda: dcp.load(blank(state, args.layer), storage_reader=S3StorageReader(region, s3t_prefix, s3client_config=config), no_dist=True))
                record("partial load from S3", "s3torchconnector", s, st)
            else:
                s, st, _ = counted(s3proxy, lambda: dcp.load(blank(state, args.layer), storage_reader=FsspecReader(fsspec_prefix), no_dist=True))
                record("partial load from S3", "FsspecReader (s3fs)", s, st)
        for who in order if "http" in cases else []:
            start = time.perf_counter()
            if who == 0:
                dcp.load(blank(state), storage_reader=ArchiveReader(env["CHECKPACK_TEST_HTTP_URL"] + "/ckpt.ckpk"), no_dist=True)
                record("full load over HTTP", "checkpack", time.perf_counter() - start)
            else:
                dcp.load(blank(state), storage_reader=FsspecReader(env["CHECKPACK_TEST_HTTP_URL"] + "/ckpt"), no_dist=True)
                record("full load over HTTP", "FsspecReader", time.perf_counter() - start)

    objects = {}
    import boto3
    s3 = boto3.client("s3", endpoint_url=env["CHECKPACK_TEST_S3_ENDPOINT"], region_name=region)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="bench/") for o in page.get("Contents", [])]
    objects["checkpack"] = sum(k.endswith(".ckpk") and "-ranks" not in k for k in keys) / args.rounds
    objects["s3torchconnector"] = sum("-s3torch/" in k for k in keys) / args.rounds
    objects["FsspecWriter (s3fs)"] = sum("-fsspec/" in k for k in keys) / args.rounds
    objects[("ranks", "checkpack")] = sum(k.endswith("-ranks.ckpk") for k in keys) / args.rounds
    objects[("ranks", "s3torchconnector")] = sum("-ranks-s3torch/" in k for k in keys) / args.rounds
    pending = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    print(f"\narchive {archive_size / 1e6:.1f} MB ({archive_size / size:.2f} of the files); medians of {args.rounds} rounds, alternating")
    print("| case | contender | wall s | requests | MB sent | MB received | objects |")
    print("|---|---|---|---|---|---|---|")
    for (case, who), runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        stats = runs[-1][1]
        if stats:
            requests = ", ".join(f"{n} {m}" for m, n in sorted(stats["requests"].items()))
            sent, received = stats["request_bytes"] / 1e6, stats["response_bytes"] / 1e6
            obj = objects.get(who, "") if case == "save to S3" else objects.get(("ranks", who), "") if "ranks" in case else ""
            print(f"| {case} | {who} | {seconds:.2f} | {requests} | {sent:.1f} | {received:.2f} | {obj} |")
        else:
            print(f"| {case} | {who} | {seconds:.2f} | | | | |")
    print(f"\npending multipart uploads after the run: {len(pending)}")
    for case in ["save to S3", "dcp.save to S3, 2 ranks", "full load from S3", "partial load from S3", "full load over HTTP"]:
        peers = dict((who, runs) for (c, who), runs in results.items() if c == case)
        ra = peers.pop("checkpack", None)
        for b, rb in peers.items():
            ta, tb = statistics.median(r[0] for r in ra), statistics.median(r[0] for r in rb)
            line = f"{case}: time checkpack/{b} = {ta / tb:.2f}"
            if ra[-1][1] and rb[-1][1]:
                line += (f"; bytes received {ra[-1][1]['response_bytes'] / max(1, rb[-1][1]['response_bytes']):.2f}"
                         f"; bytes sent {ra[-1][1]['request_bytes'] / max(1, rb[-1][1]['request_bytes']):.2f}")
            print(line)
    print("partial load target: bytes received <= 1.2 x the layer's stored frames + the tail read")


def save_from_ranks(checkpoint, who, target, region, port):
    """dcp.save from 2 gloo ranks, each saving every other item of the checkpoint's state;
    returns the seconds dcp.save took, between barriers."""
    import torch.multiprocessing as mp
    out = tempfile.mkdtemp()
    mp.spawn(_rank_save, args=(2, checkpoint, who, target, region, port, out), nprocs=2, join=True)
    seconds = float(open(os.path.join(out, "seconds")).read())
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def _rank_save(rank, world, checkpoint, who, target, region, port, out):
    import warnings
    import torch.distributed as dist
    warnings.filterwarnings("ignore")
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    state = full_state(checkpoint)
    mine = {k: v for i, (k, v) in enumerate(sorted(state.items())) if i % world == rank}
    if who == "checkpack":
        from checkpack.torch import ArchiveWriter
        writer = ArchiveWriter(target)
    else:
        from s3torchconnector import S3ClientConfig
        from s3torchconnector.dcp import S3StorageWriter
        writer = S3StorageWriter(region, target, s3client_config=S3ClientConfig(force_path_style=True))
    dist.barrier()
    start = time.perf_counter()
    dcp.save(mine, storage_writer=writer)
    dist.barrier()
    if rank == 0:
        with open(os.path.join(out, "seconds"), "w") as f:
            f.write(str(time.perf_counter() - start))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
