#!/usr/bin/env python3
"""Many small files: pack and unpack a tree of small text files against
tar + zstd, measured alternately in one run.

    bench/many_files.py --checkpack .build/release/checkpack [--files 20000] [--dirs 200] [--rounds 5]

The tree: FILES files of 200 B to 4 KiB of text in DIRS folders (made once,
under --work). Peers: `tar -cf - DIR | zstd -T0 -3 -q -o X.tar.zst` for pack;
`zstd -d -c X.tar.zst | tar -xf - -C OUT` followed by `sync` for unpack (the
same durability as checkpack, which syncs what it wrote before it renames the
tree into place). Prints the median of each and the ratio checkpack / peer,
and the archive sizes. The page cache is warm for both (the tree is read once
first), and each output is removed before the next run.
"""
import argparse, os, random, shutil, statistics, subprocess, sys, time


def make_tree(root, files, dirs):
    if os.path.exists(os.path.join(root, ".complete")):
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(7)
    words = ["tensor", "layer", "weight", "bias", "step", "rank", "shard", "optimizer", "state", "checkpoint",
             "learning", "rate", "epoch", "batch", "gradient", "norm", "attention", "head", "dim", "token"]
    for d in range(dirs):
        os.makedirs(os.path.join(root, f"d{d:03d}"), exist_ok=True)
    for f in range(files):
        size = rng.randint(200, 4096)
        text = []
        length = 0
        while length < size:
            line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + f" {rng.random():.6f}\n"
            text.append(line)
            length += len(line)
        with open(os.path.join(root, f"d{f % dirs:03d}", f"f{f:05d}.txt"), "w") as out:
            out.write("".join(text)[:size])
    open(os.path.join(root, ".complete"), "w").close()


def timed(command, shell=False):
    start = time.perf_counter()
    subprocess.run(command, shell=shell, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpack", required=True)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--dirs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", default="/tmp/checkpack-many")
    args = parser.parse_args()
    tree = os.path.join(args.work, "tree")
    make_tree(tree, args.files, args.dirs)
    archive, tarball = os.path.join(args.work, "t.ckpk"), os.path.join(args.work, "t.tar.zst")
    out = os.path.join(args.work, "out")
    subprocess.run(["tar", "-cf", "/dev/null", "-C", tree, "."], check=True)   # warm the cache
    times = {k: [] for k in ["pack", "tar", "unpack", "untar"]}
    for _ in range(args.rounds):
        times["pack"].append(timed([args.checkpack, "pack", tree, archive, "--force", "--quiet"]))
        times["tar"].append(timed(f"tar -cf - -C {tree} . | zstd -T0 -3 -q -f -o {tarball}", shell=True))
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run("sync", check=True)
        times["unpack"].append(timed([args.checkpack, "unpack", archive, out, "--quiet"]))
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run("sync", check=True)
        os.makedirs(out)
        times["untar"].append(timed(f"zstd -d -c -q {tarball} | tar -xf - -C {out} && sync", shell=True))
        shutil.rmtree(out, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    size, tar_size = os.path.getsize(archive), os.path.getsize(tarball)
    print(f"many small files: {args.files} files of 200 B-4 KiB in {args.dirs} folders; median of {args.rounds}, alternating")
    print(f"{'':28} {'checkpack s':>12} {'peer s':>8} {'ratio':>7}")
    print(f"{'pack vs tar | zstd -T0 -3':28} {median['pack']:12.3f} {median['tar']:8.3f} {median['pack'] / median['tar']:7.2f}")
    print(f"{'unpack vs zstd -d | tar -x; sync':28} {median['unpack']:12.3f} {median['untar']:8.3f} {median['unpack'] / median['untar']:7.2f}")
    print(f"size: checkpack {size / 1e6:.2f} MB, tar.zst {tar_size / 1e6:.2f} MB, ratio {size / tar_size:.3f}")


if __name__ == "__main__":
    sys.exit(main())
