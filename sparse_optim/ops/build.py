"""Building the native extension of ``csrc/``, on first use (:mod:`.native`) or ahead of time::

    python -m sparse_optim.ops.build               # build and load the extension (CUDA where available)
    python -m sparse_optim.ops.build --cuda-check  # also compile and link the CUDA sources with nvcc

Libraries go to ``$SPARSE_OPTIM_BUILD_DIR`` (default: torch's extension cache) under a directory
named by :func:`build_key` (torch, compiler, flags, CUDA choice and architectures, sources). For
compute nodes without a compiler, run the first command on a node that has one, with the same
torch and ``SPARSE_OPTIM_BUILD_DIR`` on a shared file system: the nodes then load that library.

The CUDA check needs nvcc but no GPU: it builds a shared library with setuptools in a
temporary directory and never loads it. It fails if compiling or linking fails.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
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
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return "no C++ compiler (c++ or $CXX) on PATH"
    if "-fopenmp" in cxx_flags() and not _has_openmp_header(compiler):
        return f"{compiler} finds no OpenMP header (omp.h), which torch's headers need (for clang: install libomp-dev)"
    if not _cpp_extension().is_ninja_available():
        return "ninja is not installed"
    if cuda and find_cuda_home() is None:
        return "nvcc not found (set CUDA_HOME)"
    return None


def _has_openmp_header(compiler: str) -> bool:
    probe = subprocess.run([compiler, "-fopenmp", "-E", "-x", "c++", "-"], input="#include <omp.h>\n",
                           capture_output=True, text=True)
    return probe.returncode == 0


def find_cuda_home() -> Optional[str]:
    """CUDA_HOME, CUDA_PATH, the toolkit root of the nvcc on PATH (which may be a wrapper
    script), or ``/usr/local/cuda`` (where torch looks too)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        default = Path("/usr/local/cuda")
        return str(default) if (default / "bin" / "nvcc").is_file() else None
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


def cuda_arch_list() -> str:
    """``TORCH_CUDA_ARCH_LIST`` for the build: the inherited list plus the visible GPUs'
    architectures it lacks (else the first step fails with "no kernel image")."""
    import torch

    archs = [a for a in re.split(r"[;\s]+", os.environ.get("TORCH_CUDA_ARCH_LIST", "")) if a]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            if not any(a.split("+")[0] == f"{major}.{minor}" for a in archs):
                archs.append(f"{major}.{minor}")
    return ";".join(archs) or DEFAULT_CUDA_ARCHS


def build_key(cuda: bool) -> str:
    """What the compiled library depends on: torch (version, location, CUDA), Python, the compiler,
    the flags, the CUDA choice and architectures, and every source and header of ``csrc/``."""
    import torch

    digest = hashlib.sha256()
    parts = [torch.__version__, os.path.dirname(torch.__file__), str(torch.version.cuda), sys.version,
             os.environ.get("CXX", "c++"), " ".join(cxx_flags() + link_flags()), str(cuda)]
    if cuda:
        parts += [cuda_arch_list(), " ".join(NVCC_FLAGS), str(find_cuda_home())]
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in sorted(csrc_dir().iterdir()):
        if path.suffix in (".cpp", ".cu", ".h", ".cuh"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_directory(cuda: bool) -> str:
    """``$SPARSE_OPTIM_BUILD_DIR`` (else torch's extension cache) / ``sparse_optim-<build_key>``:
    another torch, source, compiler or CUDA choice builds elsewhere instead of reusing a stale
    library or rebuilding another process's."""
    root = os.environ.get("SPARSE_OPTIM_BUILD_DIR") or _cpp_extension().get_default_build_root()
    return os.path.join(root, f"sparse_optim-{build_key(cuda)}")


def prebuilt_library(cuda: bool) -> Optional[Path]:
    """The library :func:`build_and_load` left in :func:`build_directory`, if any: it matches these
    sources, this torch and these flags by construction, so it loads without a compiler
    (ahead-of-time builds for compute nodes that have none)."""
    directory = Path(build_directory(cuda))
    library = directory / f"{EXTENSION_NAME}.so"
    return library if library.is_file() else None


@contextlib.contextmanager
def _exclusive(path: str):
    """An advisory lock the OS releases when the holder dies (fcntl), so a killed build never
    blocks the next one; on platforms without fcntl, no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_and_load(cuda: bool, build_dir: Optional[str] = None, verbose: bool = False) -> None:
    """Compile (if out of date) and load the extension: its ops appear as ``torch.ops.sparse_optim.*``.

    ``build_dir`` defaults to :func:`build_directory`. Builds are serialised by a lock next to
    the directory: concurrent processes (DDP ranks) wait and then load the finished library;
    torch's own lock file, left behind by a killed build, is removed while holding it.
    """
    build_dir = build_dir or build_directory(cuda)
    os.makedirs(build_dir, exist_ok=True)
    if cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
    with _exclusive(build_dir + ".lock"):
        stale = os.path.join(build_dir, "lock")
        if os.path.exists(stale):  # nobody else can be building: we hold the lock
            os.remove(stale)
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
