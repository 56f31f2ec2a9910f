"""One process saves a checkpoint with checkpack.torch.ArchiveWriter and with
torch's FileSystemWriter, alternating, and prints the median times and their ratio.

    python bench/save_local.py CKPT_DIR [--rounds 5] [--out /tmp/save-bench]

CKPT_DIR is a torch.distributed.checkpoint directory (bench/make_checkpoint.py);
its state is loaded once and saved by both, with each one's default durability
(both fsync what they write)."""
import argparse
import os
import shutil
import statistics
import time

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from checkpack.torch import ArchiveWriter


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="/tmp/save-bench")
    args = parser.parse_args()
    state = _load_state_dict_from_keys(checkpoint_id=args.checkpoint)
    times = {"checkpack": [], "FileSystemWriter": []}
    for r in range(args.rounds):
        for who in (["checkpack", "FileSystemWriter"] if r % 2 == 0 else ["FileSystemWriter", "checkpack"]):
            shutil.rmtree(args.out, ignore_errors=True)
            os.makedirs(args.out)
            writer = ArchiveWriter(os.path.join(args.out, "c.ckpk")) if who == "checkpack" else dcp.FileSystemWriter(os.path.join(args.out, "d"))
            start = time.perf_counter()
            dcp.save(state, storage_writer=writer, no_dist=True)
            times[who].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"save, median of {args.rounds}: " + ", ".join(f"{k} {v:.2f} s" for k, v in medians.items())
          + f"; ratio {medians['checkpack'] / medians['FileSystemWriter']:.2f}")
    shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
