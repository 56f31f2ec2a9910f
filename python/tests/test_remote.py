"""dcp.load straight from an archive on S3 (moto, authentication on) and over HTTP (nginx).

The servers are the ones .ci/run starts (scripts/test-servers.py); their
addresses come in CHECKPACK_TEST_* environment variables. Without them, in CI,
these tests fail; elsewhere they are skipped."""
import os
import shutil
import subprocess
import uuid

import pytest
import torch
import torch.distributed.checkpoint as dcp

from checkpack import CheckpackError
from checkpack.torch import ArchiveReader
from test_archive_reader import CLI, CountingReader, assert_same, state, zeros_like

SERVERS = {k[len("CHECKPACK_TEST_"):]: v for k, v in os.environ.items() if k.startswith("CHECKPACK_TEST_")}
if not SERVERS and not os.environ.get("CI"):
    pytest.skip("needs the test servers (scripts/test-servers.py)", allow_module_level=True)


@pytest.fixture
def aws(monkeypatch):
    """The AWS environment a user sets, for the S3 test server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SERVERS["S3_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SERVERS["S3_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("AWS_REGION", SERVERS["S3_REGION"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", SERVERS["S3_ENDPOINT"])
    return os.environ.copy()


def saved_archive(tmp_path):
    saved = state(3)
    dcp.save(saved, storage_writer=dcp.FileSystemWriter(str(tmp_path / "ckpt")), no_dist=True)
    subprocess.run([CLI, "pack", str(tmp_path / "ckpt"), str(tmp_path / "ckpt.ckpk"), "--quiet"], check=True)
    return saved, tmp_path / "ckpt.ckpk"


def test_dcp_load_from_s3(tmp_path, aws):
    saved, archive = saved_archive(tmp_path)
    url = f"s3://{SERVERS['S3_BUCKET']}/python/{uuid.uuid4()}.ckpk"
    subprocess.run([CLI, "pack", str(tmp_path / "ckpt"), url, "--quiet"], check=True, env=aws)
    loaded = zeros_like(saved)
    reader = CountingReader(url)
    dcp.load(loaded, storage_reader=reader, no_dist=True)
    assert_same(loaded, saved)
    assert reader.direct_reads > 0


def test_dcp_load_over_http(tmp_path):
    saved, archive = saved_archive(tmp_path)
    name = f"{uuid.uuid4()}.ckpk"
    shutil.copy(archive, os.path.join(SERVERS["HTTP_ROOT"], name))
    loaded = zeros_like(saved)
    dcp.load(loaded, storage_reader=ArchiveReader(f"{SERVERS['HTTP_URL']}/{name}"), no_dist=True)
    assert_same(loaded, saved)


def test_wrong_credentials_are_one_clean_error(tmp_path, aws, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-the-test")
    from checkpack import Archive
    with pytest.raises(PermissionError) as failure:
        Archive(f"s3://{SERVERS['S3_BUCKET']}/python/missing.ckpk")
    assert isinstance(failure.value, CheckpackError)
    assert "HTTP 403" in str(failure.value) and "wrong-secret" not in str(failure.value)


def proxy(what, body=None):
    import urllib.request
    request = urllib.request.Request(f"{SERVERS['S3_PROXY']}/__proxy__/{what}", data=body, method="POST" if body is not None else "GET")
    return urllib.request.urlopen(request).read()


def test_a_load_costs_few_requests(tmp_path, aws, monkeypatch):
    """Open is one GET; the items of a load are read in batches whose frames share
    requests: loading everything costs far fewer GETs than items, and a partial
    load at most 3 + its item count."""
    import json
    saved = {f"layer{i}.weight": torch.randn(64, 64) for i in range(40)}
    dcp.save(saved, storage_writer=dcp.FileSystemWriter(str(tmp_path / "ckpt")), no_dist=True)
    url = f"s3://{SERVERS['S3_BUCKET']}/python/{uuid.uuid4()}.ckpk"
    subprocess.run([CLI, "pack", str(tmp_path / "ckpt"), url, "--quiet"], check=True, env=aws)
    monkeypatch.setenv("AWS_ENDPOINT_URL", SERVERS["S3_PROXY"])
    for wanted in [list(saved), ["layer7.weight", "layer8.weight"]]:
        proxy("reset", b"")
        loaded = {k: torch.zeros_like(saved[k]) for k in wanted}
        dcp.load(loaded, storage_reader=ArchiveReader(url), no_dist=True)
        assert all(torch.equal(loaded[k], saved[k]) for k in wanted)
        gets = json.loads(proxy("stats"))["requests"].get("GET", 0)
        assert gets <= 3 + len(wanted) and (len(wanted) < 10 or gets < len(wanted) / 4), (len(wanted), gets)


def pending_uploads(aws):
    """The bucket's multipart uploads not completed or aborted (ListMultipartUploads)."""
    import boto3
    client = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name=aws["AWS_REGION"],
                          aws_access_key_id=aws["AWS_ACCESS_KEY_ID"], aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"])
    return client.list_multipart_uploads(Bucket=SERVERS["S3_BUCKET"]).get("Uploads", [])


def test_dcp_save_into_s3_from_one_process(tmp_path, aws):
    """ArchiveWriter("s3://…") streams the save as one multipart upload: one object,
    nothing pending, readable by every reader; overwrite=False refuses it."""
    import json
    from checkpack.torch import ArchiveWriter
    saved = state(3)
    saved["big"] = torch.randn(6 << 20)   # 24 MiB: several parts of the upload
    url = f"s3://{SERVERS['S3_BUCKET']}/python/{uuid.uuid4()}.ckpk"
    dcp.save(saved, storage_writer=ArchiveWriter(url), no_dist=True)
    subprocess.run([CLI, "verify", url], check=True, env=aws, capture_output=True)
    listing = subprocess.run([CLI, "ls", "--json", url], check=True, env=aws, capture_output=True).stdout
    assert [e["name"] for e in json.loads(listing)] == ["__0_0.distcp", ".metadata"]
    loaded = zeros_like(saved)
    dcp.load(loaded, storage_reader=ArchiveReader(url), no_dist=True)
    assert_same(loaded, saved)
    with pytest.raises(BaseException) as refused:   # torch wraps it in CheckpointException
        dcp.save(saved, storage_writer=ArchiveWriter(url, overwrite=False), no_dist=True)
    assert "already exists" in str(refused.value)
    assert pending_uploads(aws) == []


def test_a_failed_save_into_s3_aborts_its_upload(tmp_path, aws):
    from checkpack.torch import ArchiveWriter
    from torch.distributed.checkpoint import DefaultSavePlanner

    class FailingPlanner(DefaultSavePlanner):
        def resolve_data(self, write_item):
            if write_item.index.fqn == "last":
                raise RuntimeError("the disk is on fire")
            return super().resolve_data(write_item)

    saved = {"a": torch.randn(6 << 20), "b": torch.randn(6 << 20), "last": torch.ones(3)}   # 48 MiB sent first
    url = f"s3://{SERVERS['S3_BUCKET']}/python/{uuid.uuid4()}.ckpk"
    with pytest.raises(BaseException) as failed:
        dcp.save(saved, storage_writer=ArchiveWriter(url), planner=FailingPlanner(), no_dist=True)
    assert "the disk is on fire" in str(failed.value)
    assert subprocess.run([CLI, "ls", url], env=aws, capture_output=True).returncode == 1   # no object
    assert pending_uploads(aws) == []


def _randn(n, seed):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


RANK_STATES = {
    # Both ranks send parts of their own: 12 MiB each, in 5 MiB parts.
    "big": lambda rank: {f"w{rank}.{i}": _randn(1 << 20, 10 * rank + i) for i in range(3)},
    # Both below S3's 5 MiB part minimum: the coordinator sends the object as one part.
    "small": lambda rank: {f"w{rank}": _randn(1000, rank), "step": torch.tensor(7)},
    # The coordinator's 4 KB cannot be a part of its own before rank 1's 12 MiB: padding makes it up.
    "mixed": lambda rank: {"w0": _randn(1000, 0)} if rank == 0 else {f"w1.{i}": _randn(1 << 20, i) for i in range(3)},
}


@pytest.mark.parametrize("case", ["big", "small", "mixed"])
def test_two_gloo_ranks_save_one_s3_object_in_one_upload(tmp_path, aws, case):
    """Each rank streams its data into its own part numbers of one multipart upload; the
    coordinator completes it: one object that every reader opens, nothing pending."""
    import json
    import torch.multiprocessing as mp
    url = f"s3://{SERVERS['S3_BUCKET']}/python/{uuid.uuid4()}.ckpk"
    mp.spawn(_save_on_two_ranks, args=(2, url, 29640 + len(case), str(tmp_path), case, None), nprocs=2, join=True)
    assert not list(tmp_path.glob("failed-*")), [f.read_text() for f in tmp_path.glob("failed-*")]
    subprocess.run([CLI, "verify", url], check=True, env=aws, capture_output=True)
    names = [e["name"] for e in json.loads(subprocess.run([CLI, "ls", "--json", url], check=True, env=aws,
                                                            capture_output=True).stdout)]
    assert sorted(n for n in names if n.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"] and ".metadata" in names
    assert (".checkpack-padding" in names) == (case == "mixed")
    expected = {**RANK_STATES[case](0), **RANK_STATES[case](1)}
    loaded = zeros_like(expected)
    dcp.load(loaded, storage_reader=ArchiveReader(url), no_dist=True)
    assert_same(loaded, expected)
    assert pending_uploads(aws) == []


def test_a_rank_that_fails_aborts_the_shared_upload(tmp_path, aws):
    import torch.multiprocessing as mp
    url = f"s3://{SERVERS['S3_BUCKET']}/python/{uuid.uuid4()}.ckpk"
    mp.spawn(_save_on_two_ranks, args=(2, url, 29651, str(tmp_path), "big", 1), nprocs=2, join=True)
    assert sorted(f.name for f in tmp_path.glob("failed-*")) == ["failed-0", "failed-1"]   # torch fails the save on every rank
    assert "the disk is on fire" in (tmp_path / "failed-1").read_text()
    assert subprocess.run([CLI, "ls", url], env=aws, capture_output=True).returncode == 1   # no object
    assert pending_uploads(aws) == []


def _save_on_two_ranks(rank, world, url, port, out, case, failing_rank):
    import torch.distributed as dist
    from torch.distributed.checkpoint import DefaultSavePlanner
    from checkpack.torch import ArchiveWriter

    class Planner(DefaultSavePlanner):
        def resolve_data(self, write_item):
            if rank == failing_rank and write_item.index.fqn.endswith(".2"):   # after two tensors were sent
                raise RuntimeError("the disk is on fire")
            return super().resolve_data(write_item)

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dcp.save(RANK_STATES[case](rank), storage_writer=ArchiveWriter(url, part_size=5 << 20), planner=Planner())
    except BaseException as error:   # torch raises it on every rank
        with open(os.path.join(out, f"failed-{rank}"), "w") as f:
            f.write(str(error))
    dist.destroy_process_group()
