"""Builds the Swift shared library (libCheckpackC.so) of the enclosing
repository if it is not built yet, and ships it inside the package."""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LIBRARY = os.path.join(REPO, ".build", "release", "libCheckpackC.so")


class BuildWithSwiftLibrary(build_py):
    def run(self):
        if not os.path.exists(LIBRARY):
            subprocess.check_call(["swift", "build", "-c", "release", "--product", "CheckpackC"], cwd=REPO)
        super().run()
        shutil.copy(LIBRARY, os.path.join(self.build_lib, "checkpack", "libCheckpackC.so"))


setup(cmdclass={"build_py": BuildWithSwiftLibrary})
