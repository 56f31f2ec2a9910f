"""Builds, from the enclosing repository, the Swift shared library the package
loads (libCheckpackC.so) and the `checkpack` command-line tool, both with the
Swift runtime linked in statically, and ships them inside a platform wheel: an
installed package needs no Swift toolchain (only libzstd, zlib and libcurl,
which every Linux has). `swift build` is incremental: sources that changed
are rebuilt, and nothing else."""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRATCH = os.path.join(REPO, ".build-wheel")


def swift_static_libraries():
    swift = shutil.which("swift")
    if swift is None:
        raise SystemExit("building checkpack needs a Swift toolchain (swift on PATH); an installed wheel does not")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(swift))), "lib", "swift_static", "linux")


class BuildWithSwift(build_py):
    def run(self):
        # The same flags for both products, so the second build reuses the first's objects.
        flags = ["-c", "release", "--scratch-path", SCRATCH, "--static-swift-stdlib", "-Xswiftc", "-static-stdlib",
                 "-Xlinker", "-L" + swift_static_libraries()]
        for product in ["CheckpackC", "checkpack"]:
            subprocess.check_call(["swift", "build", "--product", product] + flags, cwd=REPO)
        super().run()
        package = os.path.join(self.build_lib, "checkpack")
        os.makedirs(os.path.join(package, "bin"), exist_ok=True)
        for source, target in [("libCheckpackC.so", "libCheckpackC.so"), ("checkpack", os.path.join("bin", "checkpack"))]:
            destination = os.path.join(package, target)
            shutil.copy(os.path.join(SCRATCH, "release", source), destination)
            if shutil.which("strip"):
                subprocess.check_call(["strip", destination])


class PlatformWheel(bdist_wheel):
    """Holds native code: tagged for this platform, for any Python 3."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        return ("py3", "none", super().get_tag()[2])


setup(cmdclass={"build_py": BuildWithSwift, "bdist_wheel": PlatformWheel})
