"""Packaging hook: ship ``csrc/`` (the native kernels' sources, compiled on first use) inside the
package as ``sparse_optim/csrc``, where :func:`sparse_optim.ops.build.csrc_dir` looks first.
Everything else is declared in setup.cfg."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CSRC = Path(__file__).resolve().parent / "csrc"


class BuildPyWithSources(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "sparse_optim" / "csrc"
        shutil.copytree(CSRC, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.o", "*.so", "__pycache__"))


setup(cmdclass={"build_py": BuildPyWithSources})
