"""One process loads a checkpoint through checkpack.torch.ArchiveReader (from
the archive `checkpack pack` makes of it) and through torch's FileSystemReader
(from the directory), alternating, warm page cache: a full load, one layer,
and the smallest tensor. Prints a Markdown table of medians.

    python bench/load_local.py CKPT_DIR [--rounds 7] [--layer model.encoder.layer.0.]
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from checkpack.torch import ArchiveReader

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CLI = os.environ.get("CHECKPACK_CLI", os.path.join(REPO, ".build", "release", "checkpack"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--layer", default="model.encoder.layer.0.")
    args = parser.parse_args()
    archive = os.path.join(tempfile.mkdtemp(), "c.ckpk")
    subprocess.run([CLI, "pack", args.checkpoint, archive, "--quiet"], check=True)
    state = _load_state_dict_from_keys(checkpoint_id=args.checkpoint)
    tensors = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.numel() > 0]
    smallest = min(tensors, key=lambda k: state[k].numel())
    cases = {"full load": tensors, "one layer": [k for k in tensors if k.startswith(args.layer)], "smallest tensor": [smallest]}
    print(f"| load (warm cache, median of {args.rounds}) | checkpack ms | FileSystemReader ms | ratio |")
    print("|---|---|---|---|")
    for case, keys in cases.items():
        times = {"checkpack": [], "fs": []}
        for r in range(args.rounds):
            for who in (["checkpack", "fs"] if r % 2 == 0 else ["fs", "checkpack"]):
                blank = {k: torch.zeros_like(state[k]) for k in keys}
                reader = ArchiveReader(archive) if who == "checkpack" else dcp.FileSystemReader(args.checkpoint)
                start = time.perf_counter()
                dcp.load(blank, storage_reader=reader, no_dist=True)
                times[who].append(time.perf_counter() - start)
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {case} ({len(keys)} tensors) | {m['checkpack'] * 1000:.0f} | {m['fs'] * 1000:.0f} | {m['checkpack'] / m['fs']:.2f} |")
    os.unlink(archive)


if __name__ == "__main__":
    main()
