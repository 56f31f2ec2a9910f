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
from test_archive_reader import CLI, assert_same, state, zeros_like

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
    reader = ArchiveReader(url)
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
