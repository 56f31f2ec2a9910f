"""The `checkpack` command installed with the package: runs the bundled tool."""
import os
import sys


def main():
    binary = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "checkpack")
    os.execv(binary, [binary] + sys.argv[1:])
