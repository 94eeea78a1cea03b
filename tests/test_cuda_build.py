"""The CUDA sources compile and link with nvcc (no GPU needed). Slow: runs only when
SPARSE_OPTIM_CUDA_BUILD_CHECK=1, and once per CI run (not in the reference-backend pass)."""
import os
import subprocess
import sys
import textwrap

import pytest

from sparse_optim.ops import build

pytestmark = pytest.mark.skipif(
    os.environ.get("SPARSE_OPTIM_CUDA_BUILD_CHECK") != "1" or os.environ.get("SPARSE_OPTIM_BACKEND") == "reference",
    reason="set SPARSE_OPTIM_CUDA_BUILD_CHECK=1 to run (skipped in the reference-backend pass)",
)


def test_cuda_sources_compile_link_and_register_kernels(tmp_path):
    library = build.cuda_build_check(str(tmp_path))
    # Loading needs no GPU either; a separate process keeps the CPU-only extension of this one apart.
    probe = textwrap.dedent(
        f"""
        import torch
        torch.ops.load_library({str(library)!r})
        for op in ("gated_sgd_step_", "meta_grad_accumulate_"):
            for key in ("CPU", "CUDA", "Autograd"):
                assert torch._C._dispatch_has_kernel_for_dispatch_key("sparse_optim::" + op, key), (op, key)
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
