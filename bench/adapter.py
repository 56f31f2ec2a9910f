"""checkpack.torch's ArchiveWriter/ArchiveReader against torch's own
FileSystemWriter/FileSystemReader, alternating in one run, on three checkpoints:

  fsdp2   2 gloo ranks: an FSDP2-sharded transformer (7 layers, d=512) with AdamW state, ~270 MB
  fp32    1 process: 1.2 GB of float32 weights (300 tensors of 1M elements)
  minilm  1 process: MiniLM's real weights in bf16 with float32 Adam state, ~228 MB

For each: save; full load, one-layer load and one-small-tensor load, with a
warm page cache (the files read just before) and a cold one (their pages
dropped with posix_fadvise(DONTNEED)); and each side's peak RSS per rank
(a fresh process per measurement: state built, then one save or full load).
Prints Markdown tables of medians, the ratio checkpack / torch, and the
target of issue #12 for each row.

    python bench/adapter.py [--cases fsdp2,fp32,minilm] [--rounds 5] [--out /tmp/adapter-bench]
"""
import argparse
import gc
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpack.torch import ArchiveReader, ArchiveWriter  # noqa: E402

WORLD = {"fsdp2": 2, "fp32": 1, "minilm": 1}
TARGETS = {"save": 1.2, "full load, warm": 1.3, "full load, cold": 1.0, "one layer, warm": 1.2,
           "one layer, cold": 1.2, "one small tensor, warm": 2.0, "one small tensor, cold": 2.0}
SIDES = ("checkpack", "torch")


def build_state(case, rank, world):
    """The state dict a rank saves (and loads into): the same on every run."""
    torch.manual_seed(0)
    if case == "fsdp2":
        from torch.distributed.checkpoint.state_dict import get_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (world,))
        model = torch.nn.Sequential(*[torch.nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True) for _ in range(7)])
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model(torch.randn(4, 16, 512)).sum().backward()
        optim.step()
        model_state, optim_state = get_state_dict(model, optim)
        return {"model": model_state, "optim": optim_state}, (model, optim)
    if case == "fp32":
        return {f"layers.{i // 12}.w{i % 12}": torch.randn(1 << 20) * 0.02 for i in range(300)}, None
    import make_checkpoint
    return make_checkpoint.build_state(torch.bfloat16, True), None


def part(state, case, which):
    """The subset of `state` a load asks for: everything, one layer, or the smallest tensor."""
    if which == "full":
        return state
    flat = state["model"] if case == "fsdp2" else state
    layer = {"fsdp2": "0.", "fp32": "layers.0.", "minilm": "model.encoder.layer.0."}[case]
    if which == "layer":
        picked = {k: v for k, v in flat.items() if k.startswith(layer)}
    else:
        tensors = [k for k, v in flat.items() if isinstance(v, torch.Tensor) and v.numel() > 0]
        smallest = min(tensors, key=lambda k: flat[k].numel())
        picked = {smallest: flat[smallest]}
    return {"model": picked} if case == "fsdp2" else picked


def files_of(path):
    return [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "*")))


def set_cache(path, warm):
    for name in files_of(path):
        with open(name, "rb") as f:
            if warm:
                while f.read(8 << 20):
                    pass
            else:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def memory(field):
    """A /proc/self/status memory figure, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def paths(out):
    return {"checkpack": os.path.join(out, "c.ckpk"), "torch": os.path.join(out, "d")}


def save(state, side, out, no_dist):
    target = paths(out)[side]
    writer = ArchiveWriter(target) if side == "checkpack" else dcp.FileSystemWriter(target)
    dcp.save(state, storage_writer=writer, no_dist=no_dist)


def load(state, side, out, no_dist):
    target = paths(out)[side]
    reader = ArchiveReader(target) if side == "checkpack" else dcp.FileSystemReader(target)
    dcp.load(state, storage_reader=reader, no_dist=no_dist)


def barrier(world):
    if world > 1:
        dist.barrier()


def timed(world, body):
    barrier(world)
    start = time.perf_counter()
    body()
    barrier(world)
    return time.perf_counter() - start


def fresh(out, side, rank, world):
    """Removes what the previous save of `side` left, so each save writes new files."""
    if rank == 0:
        target = paths(out)[side]
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.unlink(target)
    barrier(world)


def worker(rank, world, case, mode, side, out, rounds, port, result):
    warnings.filterwarnings("ignore")
    if world > 1:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    no_dist = world == 1
    state, keep = build_state(case, rank, world)
    report = {}
    if mode == "time":
        times = {}
        def record(row, who, seconds):
            times.setdefault(row, {s: [] for s in SIDES})[who].append(seconds)
        for r in range(rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for who in order:
                fresh(out, who, rank, world)
                record("save", who, timed(world, lambda: save(state, who, out, no_dist)))
            for which, label in (("full", "full load"), ("layer", "one layer"), ("small", "one small tensor")):
                for warm in (True, False):
                    for who in order:
                        if rank == 0:
                            set_cache(paths(out)[who], warm)
                        target = part(state, case, which)
                        record(f"{label}, {'warm' if warm else 'cold'}", who, timed(world, lambda: load(target, who, out, no_dist)))
        report = {row: {who: statistics.median(v) for who, v in sides.items()} for row, sides in times.items()}
    else:   # one save or one full load, for the peak RSS it adds to the state's own
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # the peak ("high water mark") restarts from the current RSS
        before = memory("VmRSS")
        if mode == "rss-save":
            save(state, side, out, no_dist)
        else:
            load(state, side, out, no_dist)
        barrier(world)
        report = {"before": before, "peak": memory("VmHWM")}
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, report)
        dist.destroy_process_group()
    else:
        gathered = [report]
    if rank == 0:
        with open(result, "w") as f:
            json.dump(gathered, f)


def run(case, mode, side, out, rounds, port):
    result = os.path.join(out, "result.json")
    mp.spawn(worker, args=(WORLD[case], case, mode, side, out, rounds, port, result), nprocs=WORLD[case], join=True)
    with open(result) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="fsdp2,fp32,minilm")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    port = 29710
    for case in args.cases.split(","):
        out = args.out or tempfile.mkdtemp(prefix="adapter-bench-")
        os.makedirs(out, exist_ok=True)
        port += 1
        times = run(case, "time", None, out, args.rounds, port)[0]
        rss = {}
        for mode in ("rss-save", "rss-load"):
            for side in SIDES:
                port += 1
                ranks = run(case, mode, side, out, 1, port)
                rss[(mode, side)] = max(r["peak"] - r["before"] for r in ranks)
        sizes = {side: sum(os.path.getsize(f) for f in files_of(p)) for side, p in paths(out).items()}
        print(f"\n### {case}: {WORLD[case]} rank(s), checkpoint {sizes['torch'] / 1e6:.0f} MB, archive {sizes['checkpack'] / 1e6:.0f} MB"
              f" ({sizes['checkpack'] / sizes['torch']:.2f}), median of {args.rounds}, alternating\n")
        print("| | checkpack s | torch s | ratio | target | |")
        print("|---|---|---|---|---|---|")
        for row, sides in times.items():
            ratio = sides["checkpack"] / sides["torch"]
            target = TARGETS[row]
            print(f"| {row} | {sides['checkpack']:.3f} | {sides['torch']:.3f} | {ratio:.2f} | ≤ {target} | {'met' if ratio <= target else 'missed'} |")
        for mode, label in (("rss-save", "peak RSS per rank above the state's, save"),
                            ("rss-load", "peak RSS per rank above the state's, full load")):
            extra = rss[(mode, "checkpack")] - rss[(mode, "torch")]
            print(f"| {label} (MiB) | {rss[(mode, 'checkpack')]:.0f} | {rss[(mode, 'torch')]:.0f} | {extra:+.0f} MiB | ≤ +64 MiB |"
                  f" {'met' if extra <= 64 else 'missed'} |")
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
