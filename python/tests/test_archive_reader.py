"""torch.distributed.checkpoint loads straight out of Checkpack archives, with real torch."""
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

from checkpack import Archive, CheckpackError
from checkpack.torch import ArchiveReader


class CountingReader(ArchiveReader):
    """Counts the tensor items read straight into their destination (the direct path)."""
    direct_reads = 0

    def _read_directly(self, batch, planner):
        rest = super()._read_directly(batch, planner)
        self.direct_reads += len(batch) - len(rest)
        return rest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(REPO, "fixtures")
CLI = os.environ.get("CHECKPACK_CLI", os.path.join(REPO, ".build", "release", "checkpack"))


def checkpack(*args):
    return subprocess.run([CLI, *args], check=True, capture_output=True, text=True).stdout


def state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(64, 48, generator=g),
        "h": torch.randn(300, 17, generator=g).to(torch.bfloat16),
        "ids": torch.arange(1000, dtype=torch.int64),
        "flag": torch.tensor(True),
        "empty": torch.zeros(0, 3),
        "config": {"lr": 0.01, "name": "test"},
    }


def zeros_like(sd):
    """Where to load into: zero tensors, and dicts with the same keys (DCP loads only keys that are there)."""
    def blank(v):
        if isinstance(v, torch.Tensor):
            return torch.zeros_like(v)
        if isinstance(v, dict):
            return {k: blank(x) for k, x in v.items()}
        return None
    return {k: blank(v) for k, v in sd.items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_torch_save_then_pack_then_load_from_the_archive(tmp_path):
    saved = state()
    dcp.save(saved, storage_writer=dcp.FileSystemWriter(str(tmp_path / "ckpt")), no_dist=True)
    checkpack("pack", str(tmp_path / "ckpt"), str(tmp_path / "ckpt.ckpk"), "--quiet")
    loaded = zeros_like(saved)
    reader = CountingReader(str(tmp_path / "ckpt.ckpk"))
    dcp.load(loaded, storage_reader=reader, no_dist=True)
    assert_same(loaded, saved)
    # Whole chunks went straight from the archive into the destination tensors.
    assert reader.direct_reads == sum(isinstance(v, torch.Tensor) and v.numel() > 0 for v in saved.values())


def test_loading_one_tensor_decodes_only_its_frames(tmp_path):
    saved = {f"layer{i}": torch.randn(256, 256) for i in range(8)}   # 256 KiB each
    dcp.save(saved, storage_writer=dcp.FileSystemWriter(str(tmp_path / "ckpt")), no_dist=True)
    checkpack("pack", str(tmp_path / "ckpt"), str(tmp_path / "c.ckpk"), "--quiet")
    reader = ArchiveReader(str(tmp_path / "c.ckpk"))
    one = {"layer3": torch.zeros(256, 256)}
    dcp.load(one, storage_reader=reader, no_dist=True)
    assert torch.equal(one["layer3"], saved["layer3"])
    total = sum(item["frames"] for item in json.loads(checkpack("ls", "--json", str(tmp_path / "c.ckpk"))))
    # .metadata plus the frames of one 256 KiB item, out of all eight items' frames.
    assert 0 < reader.archive.frames_decoded <= total // 4


def test_a_zstandard_extension_checkpoint_packs_byte_identical_and_loads(tmp_path):
    pytest.importorskip("zstandard")
    source = os.path.join(FIXTURES, "torch", "zstd")
    checkpack("pack", source, str(tmp_path / "z.ckpk"), "--quiet")
    checkpack("unpack", str(tmp_path / "z.ckpk"), str(tmp_path / "z"), "--quiet")
    assert subprocess.run(["diff", "-r", source, str(tmp_path / "z")]).returncode == 0
    sys.path.insert(0, FIXTURES)
    import make_torch_fixtures
    expected = make_torch_fixtures.state()
    loaded = zeros_like(expected)
    dcp.load(loaded, storage_reader=ArchiveReader(str(tmp_path / "z.ckpk")), no_dist=True)
    assert_same({k: v for k, v in loaded.items() if k != "meta"}, {k: v for k, v in expected.items() if k != "meta"})
    assert loaded["meta"] == expected["meta"]


def test_a_two_rank_checkpoint_loads_resharded_into_one_process(tmp_path):
    source = os.path.join(FIXTURES, "example-checkpoint")
    checkpack("pack", source, str(tmp_path / "e.ckpk"), "--quiet")
    wanted = {"embed.weight": torch.zeros(64, 32, dtype=torch.bfloat16), "linear.weight": torch.zeros(32, 32),
              "linear.bias": torch.zeros(32), "step": torch.tensor(0), "mask": torch.zeros(40, dtype=torch.bool)}
    from_dir = {k: v.clone() for k, v in wanted.items()}
    dcp.load(from_dir, storage_reader=dcp.FileSystemReader(source), no_dist=True)
    from_archive = {k: v.clone() for k, v in wanted.items()}
    dcp.load(from_archive, storage_reader=ArchiveReader(str(tmp_path / "e.ckpk")), no_dist=True)
    assert_same(from_archive, from_dir)
    assert from_archive["embed.weight"].abs().sum() > 0


def _load_on_rank(rank, world, archive, directory, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor
    mesh = DeviceMesh("cpu", list(range(world)))
    # Shard on dim 1: a different chunking than the save used (dim 0).
    def fresh():
        return {"embed.weight": distribute_tensor(torch.zeros(64, 32, dtype=torch.bfloat16), mesh, [Shard(1)]),
                "linear.weight": distribute_tensor(torch.zeros(32, 32), mesh, [Shard(1)])}
    a, d = fresh(), fresh()
    dcp.load(a, storage_reader=ArchiveReader(archive))
    dcp.load(d, storage_reader=dcp.FileSystemReader(directory))
    for k in a:
        assert torch.equal(a[k].to_local(), d[k].to_local()), k
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_processes_load_shards_from_one_archive(tmp_path):
    source = os.path.join(FIXTURES, "example-checkpoint")
    checkpack("pack", source, str(tmp_path / "e.ckpk"), "--quiet")
    mp.spawn(_load_on_rank, args=(2, str(tmp_path / "e.ckpk"), source, 29611), nprocs=2, join=True)


def test_inspect_agrees_with_torchs_own_metadata(tmp_path):
    for name in ["example-checkpoint", os.path.join("torch", "single"), os.path.join("torch", "zstd")]:
        source = os.path.join(FIXTURES, name)
        checkpack("pack", source, str(tmp_path / "i.ckpk"), "--quiet", "--force")
        torch_md = dcp.FileSystemReader(source).read_metadata()
        for path in [source, str(tmp_path / "i.ckpk")]:
            inspected = {item["name"]: item for item in json.loads(checkpack("inspect", "--json", path))["items"]}
            assert inspected.keys() == torch_md.state_dict_metadata.keys(), path
            for fqn, md in torch_md.state_dict_metadata.items():
                if hasattr(md, "properties"):
                    assert inspected[fqn]["dtype"] == str(md.properties.dtype).replace("torch.", ""), fqn
                    assert inspected[fqn]["shape"] == list(md.size), fqn
                    assert [c["offsets"] for c in inspected[fqn]["chunks"]] == [list(c.offsets) for c in md.chunks]
                else:
                    assert inspected[fqn]["kind"] == "bytes", fqn


def test_damage_is_an_error_not_wrong_data(tmp_path):
    saved = state()
    dcp.save(saved, storage_writer=dcp.FileSystemWriter(str(tmp_path / "ckpt")), no_dist=True)
    checkpack("pack", str(tmp_path / "ckpt"), str(tmp_path / "c.ckpk"), "--quiet")
    data = bytearray((tmp_path / "c.ckpk").read_bytes())
    data[len(data) // 3] ^= 0x40   # inside the data file's frames
    (tmp_path / "bad.ckpk").write_bytes(bytes(data))
    with pytest.raises(BaseException) as caught:   # torch wraps it in CheckpointException (a BaseException)
        dcp.load(zeros_like(saved), storage_reader=ArchiveReader(str(tmp_path / "bad.ckpk")), no_dist=True)
    assert "CRC32C" in str(caught.value) or "checksum" in str(caught.value).lower() or "corrupt" in str(caught.value).lower()
    with pytest.raises(CheckpackError):
        Archive(str(tmp_path / "ckpt" / ".metadata"))


def test_errors_are_the_exceptions_python_code_expects(tmp_path):
    from checkpack import ArchiveNotFoundError, CorruptArchiveError
    with pytest.raises(FileNotFoundError) as missing:
        Archive(str(tmp_path / "missing.ckpk"))
    assert isinstance(missing.value, CheckpackError) and isinstance(missing.value, ArchiveNotFoundError)
    assert "missing.ckpk" in str(missing.value)
    dcp.save(state(), storage_writer=dcp.FileSystemWriter(str(tmp_path / "ckpt")), no_dist=True)
    checkpack("pack", str(tmp_path / "ckpt"), str(tmp_path / "c.ckpk"), "--quiet")
    with pytest.raises(FileNotFoundError):
        Archive(str(tmp_path / "c.ckpk")).read("no-such-entry")
    data = bytearray((tmp_path / "c.ckpk").read_bytes())
    data[len(data) // 3] ^= 0x40
    (tmp_path / "bad.ckpk").write_bytes(bytes(data))
    archive = Archive(str(tmp_path / "bad.ckpk"))
    with pytest.raises(CorruptArchiveError) as damaged:
        for name in ["__0_0.distcp", "__1_0.distcp", ".metadata"]:
            if archive.size(name) is not None:
                archive.read(name)
    assert damaged.value.offset is not None and damaged.value.entry
    # The constructor opens nothing: a missing archive fails inside dcp.load, as torch's own readers do.
    reader = ArchiveReader(str(tmp_path / "missing.ckpk"))
    with pytest.raises(BaseException) as caught:
        dcp.load(zeros_like(state()), storage_reader=reader, no_dist=True)
    assert "missing.ckpk" in str(caught.value)


def test_a_reused_reader_sees_the_archive_saved_again(tmp_path):
    path = str(tmp_path / "c.ckpk")
    reader = ArchiveReader(path)
    for value in [2.0, 7.0]:
        saved = {"x": torch.full((100,), value)}
        shutil.rmtree(tmp_path / "ckpt", ignore_errors=True)
        dcp.save(saved, storage_writer=dcp.FileSystemWriter(str(tmp_path / "ckpt")), no_dist=True)
        checkpack("pack", str(tmp_path / "ckpt"), path, "--quiet", "--force")
        loaded = {"x": torch.zeros(100)}
        dcp.load(loaded, storage_reader=reader, no_dist=True)
        assert torch.equal(loaded["x"], saved["x"])


# ---- Saving into an archive ------------------------------------------------

from checkpack.torch import ArchiveWriter  # noqa: E402


def _global_state():
    g = torch.Generator().manual_seed(11)
    return {"embed": torch.randn(40, 24, generator=g).to(torch.bfloat16), "proj": torch.randn(24, 16, generator=g),
            "bias": torch.randn(16, generator=g), "step": torch.tensor(123)}


def _save_on_rank(rank, world, archive, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor
    mesh = DeviceMesh("cpu", list(range(world)))
    sd = {k: distribute_tensor(v, mesh, [Shard(0)]) if v.dim() == 2 else v for k, v in _global_state().items()}
    sd["extra"] = {"epoch": 5}
    dcp.save(sd, storage_writer=ArchiveWriter(archive))
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_ranks_save_one_archive_that_torch_loads_after_unpack(tmp_path):
    archive = str(tmp_path / "saved.ckpk")
    mp.spawn(_save_on_rank, args=(2, archive, 29622), nprocs=2, join=True)
    assert sorted(os.listdir(tmp_path)) == ["saved.ckpk"]   # no temporary file left
    checkpack("verify", archive)
    entries = json.loads(checkpack("ls", "--json", archive))
    # Each rank wrote into its own region of the file; the gap between them became a
    # padding entry of at most a block, and the rest of it was collapsed out of the file.
    assert [e["name"] for e in entries] == ["__0_0.distcp", ".checkpack-padding-1", "__1_0.distcp", ".metadata"]
    assert 0 < entries[1]["size"] <= os.statvfs(tmp_path).f_bsize
    assert os.path.getsize(archive) < 1 << 20
    checkpack("unpack", archive, str(tmp_path / "unpacked"), "--quiet")
    expected = _global_state()
    loaded = {k: torch.zeros_like(v) for k, v in expected.items()}
    loaded["extra"] = {"epoch": None}
    dcp.load(loaded, storage_reader=dcp.FileSystemReader(str(tmp_path / "unpacked")), no_dist=True)
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k
    assert loaded["extra"] == {"epoch": 5}
    # And loaded resharded (two ranks' shards, one process) straight from the archive.
    direct = {k: torch.zeros_like(v) for k, v in expected.items()}
    dcp.load(direct, storage_reader=ArchiveReader(archive), no_dist=True)
    for k, v in expected.items():
        assert torch.equal(direct[k], v), k


def test_every_item_of_a_saved_archive_starts_a_frame(tmp_path):
    archive = str(tmp_path / "one.ckpk")
    sd = {f"t{i}": torch.randn(50, 50) for i in range(5)}
    dcp.save(sd, storage_writer=ArchiveWriter(archive), no_dist=True)
    data = [e for e in json.loads(checkpack("ls", "--json", archive)) if e["name"] == "__0_0.distcp"][0]
    reader = CountingReader(archive)
    offsets = sorted(info.offset for info in reader.read_metadata().storage_data.values())
    assert set(offsets[1:]) <= set(data["item_boundaries"])
    # Inside each torch.save item, the tensor's storage record is an item of
    # its own (start and end), coded in byte planes.
    assert len(data["item_boundaries"]) == 4 + 2 * 5
    assert "zstd/planes" in data["codecs"]
    loaded = {k: torch.zeros_like(v) for k, v in sd.items()}
    dcp.load(loaded, storage_reader=reader, no_dist=True)
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert reader.direct_reads == len(sd)


def test_the_zip_crc_is_skipped_in_the_saving_thread_only(tmp_path):
    """Items in an archive carry no zip CRC32 (the frames' CRC32C covers them);
    torch.save anywhere else keeps it, during a save as after it."""
    import threading
    import zipfile
    from checkpack._torch_writer import _without_zip_crc

    def crc_of_data(blob):
        """The CRC-32 the zip's central directory gives the tensor's storage record."""
        return [r.CRC for r in zipfile.ZipFile(io.BytesIO(blob)).infolist() if r.filename.endswith("/data/0")][0]

    def saved_by_torch():
        buffer = io.BytesIO()
        torch.save(torch.arange(10), buffer)
        return buffer.getvalue()

    archive = str(tmp_path / "c.ckpk")
    sd = {"w": torch.randn(64, 64)}
    dcp.save(sd, storage_writer=ArchiveWriter(archive), no_dist=True)
    with Archive(archive) as a:
        assert crc_of_data(a.read("__0_0.distcp")) == 0
    loaded = {"w": torch.zeros(64, 64)}
    dcp.load(loaded, storage_reader=ArchiveReader(archive), no_dist=True)
    assert torch.equal(loaded["w"], sd["w"])
    assert torch.serialization.get_crc32_options() and crc_of_data(saved_by_torch()) != 0
    elsewhere = []
    with _without_zip_crc():
        thread = threading.Thread(target=lambda: elsewhere.append(crc_of_data(saved_by_torch())))
        thread.start()
        thread.join()
        assert crc_of_data(saved_by_torch()) == 0
    assert elsewhere[0] != 0 and crc_of_data(saved_by_torch()) != 0


def test_a_file_left_by_a_killed_save_is_not_joined_into_the_next(tmp_path):
    archive = str(tmp_path / "x.ckpk")
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "__3_0.distcp").write_bytes(b"from a save that was killed")
    leftover = tmp_path / ".x.ckpk.ckpk-tmp-Ab3xYz"
    checkpack("pack", str(stale), str(leftover), "--quiet")
    dcp.save({"t": torch.ones(4)}, storage_writer=ArchiveWriter(archive), no_dist=True)
    names = [e["name"] for e in json.loads(checkpack("ls", "--json", archive))]
    assert names == ["__0_0.distcp", ".metadata"]
    assert leftover.exists()   # left for whoever owns it; checkpack reports such leftovers


def test_a_drop_in_for_file_system_writer(tmp_path):
    """FileSystemWriter's arguments, with their meaning: the class name is all that changes."""
    archive = str(tmp_path / "missing-parent" / "c.ckpk")
    saved = {f"w{i}": torch.randn(32, 8) for i in range(6)}
    writer = ArchiveWriter(archive, single_file_per_rank=True, sync_files=False, thread_count=2,
                           per_thread_copy_ahead=1 << 20, cache_staged_state_dict=False, overwrite=False)
    dcp.save(saved, storage_writer=writer, no_dist=True)
    loaded = {k: torch.zeros_like(v) for k, v in saved.items()}
    dcp.load(loaded, storage_reader=ArchiveReader(archive), no_dist=True)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    # thread_count=2 is accepted; a rank writes one stream into the archive, compressed by every core.
    assert [e["name"] for e in json.loads(checkpack("ls", "--json", archive))] == ["__0_0.distcp", ".metadata"]
    with pytest.raises(BaseException) as refused:   # torch wraps it in CheckpointException
        dcp.save(saved, storage_writer=ArchiveWriter(archive, overwrite=False), no_dist=True)
    assert "already exists" in str(refused.value)
    dcp.save({"x": torch.ones(3)}, storage_writer=ArchiveWriter(archive), no_dist=True)   # overwrite=True by default
    loaded = {"x": torch.zeros(3)}
    dcp.load(loaded, storage_reader=ArchiveReader(archive), no_dist=True)
    assert torch.equal(loaded["x"], torch.ones(3))


SAVE_UNTIL_KILLED = """
import sys, torch, torch.distributed.checkpoint as dcp
from checkpack.torch import ArchiveWriter
state = {f"t{i}": torch.randn(1 << 20) for i in range(64)}   # 256 MB of float32
dcp.save(state, storage_writer=ArchiveWriter(sys.argv[1]), no_dist=True)
"""


@pytest.mark.parametrize("signal_number", [15, 1, 2])   # SIGTERM, SIGHUP, SIGINT
def test_a_signal_during_a_save_leaves_nothing_behind(tmp_path, signal_number):
    import signal as signals
    import time
    archive = tmp_path / "c.ckpk"
    script = tmp_path / "save.py"
    script.write_text(SAVE_UNTIL_KILLED)
    process = subprocess.Popen([sys.executable, str(script), str(archive)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not any(".ckpk-" in name for name in os.listdir(tmp_path)) and time.time() < deadline:
        time.sleep(0.02)
    assert any(".ckpk-" in name for name in os.listdir(tmp_path)), "the save made no temporary file"
    process.send_signal(signal_number)
    status = process.wait(timeout=60)
    assert status != 0
    if signal_number != signals.SIGINT:
        assert status == -signal_number
    assert sorted(os.listdir(tmp_path)) == ["save.py"]
