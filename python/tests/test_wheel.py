"""The wheel works without a Swift toolchain: built with `pip wheel ./python`,
installed, and used to save and load with the toolchain's folder hidden (a
private mount namespace with an empty folder mounted over it)."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.dirname(HERE)

CHECK = textwrap.dedent("""
    import os, sys, tempfile, torch, torch.distributed.checkpoint as dcp
    import checkpack
    from checkpack.torch import ArchiveReader, ArchiveWriter
    assert checkpack.__file__.startswith(sys.argv[1]), checkpack.__file__
    assert not os.listdir(sys.argv[2]), "the toolchain is still visible"
    d = tempfile.mkdtemp()
    saved = {"w": torch.randn(16, 16), "b": torch.arange(10)}
    dcp.save(saved, storage_writer=ArchiveWriter(os.path.join(d, "c.ckpk")), no_dist=True)
    loaded = {k: torch.zeros_like(v) for k, v in saved.items()}
    dcp.load(loaded, storage_reader=ArchiveReader(os.path.join(d, "c.ckpk")), no_dist=True)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    print("saved and loaded")
""")


def test_the_wheel_needs_no_swift_toolchain(tmp_path):
    swift = shutil.which("swift")
    if swift is None or os.geteuid() != 0 or shutil.which("unshare") is None:
        if os.environ.get("CI"):
            pytest.fail("this test needs swift on PATH, root and unshare")
        pytest.skip("needs swift on PATH, root and unshare")
    toolchain = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(swift))))   # …/usr/bin/swift
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", PACKAGE, "-w", str(tmp_path / "wheels")], check=True)
    wheels = os.listdir(tmp_path / "wheels")
    assert len(wheels) == 1 and wheels[0].endswith("-py3-none-linux_x86_64.whl"), wheels
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(tmp_path / "wheels" / wheels[0])], check=True)
    (tmp_path / "check.py").write_text(CHECK)
    empty = tmp_path / "empty"
    empty.mkdir()
    script = (f"mount --bind {empty} {toolchain} && "
              f"PYTHONPATH={target} {sys.executable} {tmp_path / 'check.py'} {target} {toolchain} && "
              f"PYTHONPATH={target} {target / 'bin' / 'checkpack'} --version")
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "saved and loaded" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "0.1.0"
