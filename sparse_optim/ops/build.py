"""Building the native extension of ``csrc/``, on first use (:mod:`.native`) or ahead of time::

    python -m sparse_optim.ops.build               # build and load the CPU extension
    python -m sparse_optim.ops.build --cuda-check  # also compile and link the CUDA sources with nvcc

The CUDA check needs nvcc but no GPU: it builds a shared library with setuptools in a
temporary directory and never loads it. It fails if compiling or linking fails.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import List, MutableMapping, Optional

EXTENSION_NAME = "sparse_optim_native"
CPU_SOURCES = ("bindings.cpp", "flat_operands.cpp", "gated_ops.cpp", "gated_cpu.cpp", "kronecker_ops.cpp",
               "finite_cpu.cpp")
CUDA_SOURCES = ("gated_cuda.cu",)
NVCC_FLAGS = ["-O3", "--fmad=false"]  # the kernels place their fused multiply-adds explicitly
DEFAULT_CUDA_ARCHS = "8.0"

_PACKAGE = Path(__file__).resolve().parents[1]


def csrc_dir() -> Path:
    """``sparse_optim/csrc`` in an installed package, else ``csrc/`` of the repository."""
    packaged = _PACKAGE / "csrc"
    return packaged if packaged.is_dir() else _PACKAGE.parent / "csrc"


def sources(cuda: bool) -> List[str]:
    names = CPU_SOURCES + (CUDA_SOURCES if cuda else ())
    return [str(csrc_dir() / name) for name in names]


def cxx_flags() -> List[str]:
    """Optimisation flags, and OpenMP where torch's at::parallel_for (inlined into the kernels) is
    built on it. -fno-trapping-math lets g++ turn the kernels' selects into vector blends;
    -ffp-contract=off keeps it from fusing multiply-adds the kernels place explicitly."""
    import torch

    openmp = "-fopenmp" if torch.backends.openmp.is_available() else "-fopenmp-simd"
    return ["-O3", "-fno-trapping-math", "-ffp-contract=off", openmp]


def link_flags() -> List[str]:
    return [flag for flag in cxx_flags() if flag == "-fopenmp"]


def _cpp_extension():
    """torch.utils.cpp_extension, first imported with CUDA_HOME set to the toolkit of the nvcc on
    PATH (torch's own guess is wrong when nvcc is a wrapper script)."""
    if "torch.utils.cpp_extension" not in sys.modules:
        _set_cuda_home(os.environ)
    import torch.utils.cpp_extension as cpp_extension

    return cpp_extension


def missing_prerequisite(cuda: bool) -> Optional[str]:
    """Why the extension cannot be built here, or None."""
    missing = [s for s in sources(cuda) if not os.path.isfile(s)]
    if missing:
        return f"sources not found: {', '.join(missing)}"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (c++ or $CXX) on PATH"
    if not _cpp_extension().is_ninja_available():
        return "ninja is not installed"
    if cuda and find_cuda_home() is None:
        return "nvcc not found (set CUDA_HOME)"
    return None


def find_cuda_home() -> Optional[str]:
    """CUDA_HOME, CUDA_PATH, or the toolkit root of the nvcc on PATH (which may be a wrapper script)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    root = Path(os.path.realpath(nvcc)).parent.parent
    if (root / "include" / "cuda_runtime.h").is_file():
        return str(root)
    dryrun = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True)
    top = re.search(r"TOP=(\S+)", dryrun.stdout + dryrun.stderr)
    return str(Path(top.group(1)).resolve()) if top else None


def _set_cuda_home(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    home = find_cuda_home()
    if home is not None:
        env.setdefault("CUDA_HOME", home)
    return env


def build_and_load(cuda: bool, build_dir: Optional[str] = None, verbose: bool = False) -> None:
    """Compile (if out of date) and load the extension: its ops appear as ``torch.ops.sparse_optim.*``.

    ``build_dir`` defaults to ``$SPARSE_OPTIM_BUILD_DIR``, else torch's extension cache.
    """
    build_dir = build_dir or os.environ.get("SPARSE_OPTIM_BUILD_DIR")
    if build_dir:
        os.makedirs(build_dir, exist_ok=True)
    _cpp_extension().load(
        name=EXTENSION_NAME,
        sources=sources(cuda),
        extra_cflags=cxx_flags(),
        extra_cuda_cflags=NVCC_FLAGS,
        extra_ldflags=link_flags(),
        build_directory=build_dir,
        is_python_module=False,
        verbose=verbose,
    )


_SETUP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from setuptools import setup
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    cfg = json.loads(sys.argv[1])
    setup(
        name=cfg["name"],
        ext_modules=[CUDAExtension(cfg["name"], cfg["sources"], extra_compile_args=cfg["flags"],
                                   extra_link_args=cfg["link"])],
        cmdclass={"build_ext": BuildExtension},
        script_args=["build_ext", "--build-lib", cfg["out"], "--build-temp", cfg["out"] + "/tmp"],
    )
    """
)


def cuda_build_check(out_dir: Optional[str] = None, verbose: bool = False) -> Path:
    """Compile the CPU and CUDA sources with g++ / nvcc and link them (``--no-undefined``) into a
    shared library under ``out_dir`` (default: a temporary directory), without loading it.

    Returns the library's path; raises RuntimeError with the end of the build log if it fails.
    """
    reason = missing_prerequisite(cuda=True)
    if reason is not None:
        raise RuntimeError(f"CUDA build check impossible: {reason}")
    out_dir = out_dir or tempfile.mkdtemp(prefix="sparse_optim_cuda_check_")
    os.makedirs(out_dir, exist_ok=True)
    config = {"name": EXTENSION_NAME + "_cuda_check", "out": out_dir, "sources": sources(cuda=True),
              "flags": {"cxx": cxx_flags(), "nvcc": NVCC_FLAGS}, "link": ["-Wl,--no-undefined", *link_flags()]}
    env = _set_cuda_home(dict(os.environ))
    env.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)  # no GPU to detect the architecture from
    cmd = [sys.executable, "-c", _SETUP_SCRIPT, json.dumps(config)]
    result = subprocess.run(cmd, env=env, cwd=out_dir, capture_output=True, text=True)
    log = result.stdout + result.stderr
    if verbose:
        print(log, file=sys.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"CUDA build check failed (exit code {result.returncode}):\n{log[-6000:]}")
    libraries = sorted(Path(out_dir).glob(f"{EXTENSION_NAME}_cuda_check*.so"))
    if not libraries:
        raise RuntimeError(f"CUDA build check: the build succeeded but produced no library in {out_dir}")
    return libraries[0]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_optim.ops.build", description=__doc__.split("\n")[0])
    parser.add_argument("--cuda-check", action="store_true",
                        help="also compile and link the CUDA sources (no GPU needed)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    reason = missing_prerequisite(cuda)
    if reason is not None:
        print(f"cannot build: {reason}", file=sys.stderr)
        return 1
    build_and_load(cuda, verbose=args.verbose)
    print(f"built and loaded {EXTENSION_NAME} ({'CPU + CUDA' if cuda else 'CPU'} kernels)")
    if args.cuda_check:
        try:
            library = cuda_build_check(verbose=args.verbose)
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
        print(f"CUDA build check passed: {library}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
