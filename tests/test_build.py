"""Building and loading the native extension (sparse_optim.ops.build / native): cache keys,
locks, concurrent builds, ops registered ahead of time, a GPU machine without nvcc, and other
compilers. Each case runs in a fresh process (the extension loads once per process)."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sparse_optim.ops import build, native

needs_native = pytest.mark.skipif(not native.available(), reason="native extension not available")


def _python(code: str, env=None, timeout=900) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def test_build_key_changes_with_sources_compiler_and_cuda_choice(tmp_path, monkeypatch):
    """A changed source (or header), compiler or CUDA choice builds elsewhere: no stale library."""
    csrc = tmp_path / "csrc"
    shutil.copytree(build.csrc_dir(), csrc)
    monkeypatch.setattr(build, "csrc_dir", lambda: csrc)
    key = build.build_key(cuda=False)
    assert build.build_key(cuda=False) == key
    header = csrc / "gates.h"
    header.write_text(header.read_text() + "\n// changed\n")
    changed = build.build_key(cuda=False)
    assert changed != key
    monkeypatch.setenv("CXX", "g++-11")
    assert build.build_key(cuda=False) not in (key, changed)
    monkeypatch.delenv("CXX")
    assert build.build_key(cuda=True) != changed
    monkeypatch.setenv("SPARSE_OPTIM_BUILD_DIR", str(tmp_path / "cache"))
    assert build.build_directory(False) == str(tmp_path / "cache" / f"sparse_optim-{changed}")


@needs_native
def test_a_killed_build_lock_and_two_concurrent_builds_neither_hang_nor_break(tmp_path):
    """torch's lock file left by a killed build is removed; two processes building into the same
    (empty) cache at once both end up with working kernels."""
    env = {"SPARSE_OPTIM_BUILD_DIR": str(tmp_path)}
    probe = """
        import torch
        from sparse_optim.ops import build, native
        assert native.available()
        p, g, m = [torch.zeros(3)], [torch.ones(3)], [torch.zeros(3)]
        native.gated_sgd_step_(p, g, m, [None], None, kind="step", scale=0.5)
        assert torch.equal(p[0], torch.full((3,), -0.5)), p
        print(build.build_directory(False))
    """
    directory = Path(_python("from sparse_optim.ops import build; print(build.build_directory(False))",
                             env).stdout.strip())
    directory.mkdir(parents=True)
    (directory / "lock").write_text("")  # what a build killed half-way leaves
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(probe)], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        assert out.strip() == str(directory)


@needs_native
def test_ops_registered_ahead_of_time_get_fake_kernels_and_are_used(tmp_path):
    """A library loaded before sparse_optim (an ahead-of-time build) is used, with its fake
    kernels registered for torch.compile and its CUDA support read from the dispatcher."""
    library = next(Path(build.build_directory(False)).glob("*.so"))
    result = _python(f"""
        import torch
        torch.ops.load_library({str(library)!r})
        from sparse_optim.ops import native
        assert native.available() and not native.supports("cuda")
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode():
            p = [torch.zeros(4)]
            native.gated_sgd_step_(p, [torch.ones(4)], [torch.zeros(4)], [None], None, kind="step", scale=0.1)
        print("ok")
    """, {"SPARSE_OPTIM_NO_BUILD": "0"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@needs_native
def test_gpu_machine_without_nvcc_still_builds_and_uses_the_cpu_kernels():
    result = _python("""
        import warnings
        from unittest import mock
        import torch
        from sparse_optim.ops import build, native
        with mock.patch("torch.cuda.is_available", return_value=True), \\
                mock.patch.object(build, "find_cuda_home", return_value=None), \\
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert native.available()
        assert native.supports("cpu") and not native.supports("cuda")
        messages = [str(w.message) for w in caught]
        assert any("CUDA kernels not built (nvcc not found" in m for m in messages), messages
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


_COMPILERS = [c for c in ("g++-11", "clang++-14") if shutil.which(c)]


@pytest.mark.skipif(os.environ.get("SPARSE_OPTIM_COMPILER_CHECK") != "1" or not _COMPILERS,
                    reason="set SPARSE_OPTIM_COMPILER_CHECK=1 with g++-11 or clang++-14 installed")
def test_other_compilers_build_kernels_that_match_the_reference(tmp_path):
    """One extra build per run (CI: g++-11, Ubuntu 22.04's compiler; locally also clang)."""
    compiler = _COMPILERS[0] if os.environ.get("CI") else None
    for cxx in ([compiler] if compiler else _COMPILERS):
        result = _python("""
            import torch
            from sparse_optim.ops import native, reference
            assert native.available(), "no native build"
            torch.manual_seed(0)
            shapes = [(1000,), (33, 7), (70000,)]
            for kind in ("step", "relu", "linear"):
                args = [[torch.randn(s) for s in shapes] for _ in range(3)] + [[None] * 3, [torch.zeros(s) for s in shapes]]
                ref = [[t.clone() if t is not None else None for t in lst] for lst in args]
                native.gated_sgd_step_(*args, kind=kind, scale=0.1, momentum=0.9, weight_decay=0.01)
                reference.gated_sgd_step_(*ref, kind=kind, scale=0.1, momentum=0.9, weight_decay=0.01)
                for a, b in zip(args[0] + args[3] + args[4], ref[0] + ref[3] + ref[4]):
                    assert torch.equal(a, b), kind
            print("ok")
        """, {"CXX": cxx, "SPARSE_OPTIM_BUILD_DIR": str(tmp_path / cxx)})
        assert result.returncode == 0 and result.stdout.strip() == "ok", (cxx, result.stderr[-3000:])


@needs_native
def test_an_ahead_of_time_build_loads_without_a_compiler():
    """A node without a compiler loads the library built for this configuration earlier."""
    assert build.prebuilt_library(False) is not None
    result = _python("""
        from unittest import mock
        from sparse_optim.ops import build, native
        with mock.patch.object(build, "missing_prerequisite", return_value="no C++ compiler (c++ or $CXX) on PATH"), \\
                mock.patch.object(build, "build_and_load", side_effect=AssertionError("tried to build")):
            assert native.available()
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@needs_native
def test_a_wheel_ships_the_sources_and_uses_its_kernels(tmp_path):
    """``pip wheel .`` packs csrc/ into sparse_optim/csrc; installed from the wheel alone, the
    package builds and uses its native CPU kernels."""
    import zipfile
    repo = Path(__file__).resolve().parents[1]
    wheels = tmp_path / "wheels"
    made = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           str(repo), "-w", str(wheels)], capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    wheel = next(wheels.glob("sparse_optim-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for source in build.CPU_SOURCES + build.CUDA_SOURCES:
        assert f"sparse_optim/csrc/{source}" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sparse_optim, torch
        from sparse_optim import ops
        from sparse_optim.ops import build, native
        assert sparse_optim.__file__.startswith({str(site)!r}), sparse_optim.__file__
        assert str(build.csrc_dir()).startswith({str(site)!r}), build.csrc_dir()
        assert ops.backend() == "cpu" and ops.implementation(torch.device("cpu")) is native
        w = torch.nn.Parameter(torch.ones(3)); w.grad = torch.ones(3)
        opt = sparse_optim.MaskedSGD([w], lr=0.5, mask_init="constant", mask_init_value=0.0)
        opt.step(); assert torch.equal(w.detach(), torch.full((3,), 0.5))
        print("ok")
    """)], capture_output=True, text=True, cwd=tmp_path, timeout=900,
        env={**os.environ, "PYTHONPATH": str(site), "SPARSE_OPTIM_BUILD_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
