"""The GPU kernels' logic on any machine: Triton's interpreter runs them on the CPU (see interpret_kernels.py)."""

import importlib.util
import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_kernels_match_references_in_the_triton_interpreter():
    script = os.path.join(os.path.dirname(__file__), "interpret_kernels.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "interpreted kernels match the references" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_code_ops_match_references_in_the_triton_interpreter():
    script = os.path.join(os.path.dirname(__file__), "interpret_code_ops.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "interpreted code ops match the references" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@pytest.mark.parametrize("one_pass", [True, False])
def test_code_ops_compile_for_hopper_without_a_gpu(one_pass):
    """The interpreter runs the kernels' logic, not their compilation: Triton compiles them here for sm_90 (its own
    ptxas, no GPU needed), both tiles of ``quantize_token_rows`` (bf16 rows to e4m3 codes) and ``unpack_code_rows``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qsam2_ext.kernels import code_ops

    target = GPUTarget("cuda", 90, 32)
    tokens = {"x_ptr": "*bf16", "codes_ptr": "*fp8e4nv", "center_ptr": "*fp32", "step_ptr": "*fp32", "sum_ptr": "*i32",
              "M": "i32", "K": "i32", "stride_xm": "i32", "BITS": "constexpr", "BLOCK_M": "constexpr",
              "BLOCK_K": "constexpr", "ONE_PASS": "constexpr"}
    block_k, block_m, warps, _ = code_ops.token_tile(576 if one_pass else code_ops.ONE_PASS_MAX + 1)
    kernel = triton.compile(ASTSource(code_ops.quantize_token_rows, tokens, constexprs={
        "BITS": 4, "BLOCK_M": block_m, "BLOCK_K": block_k, "ONE_PASS": one_pass}), target=target,
        options={"num_warps": warps})
    assert kernel.asm["cubin"]
    weights = {"w_ptr": "*u8", "codes_ptr": "*fp8e4nv", "sum_ptr": "*i32", "N": "i32", "K": "i32", "stride_wn": "i32",
               "BITS": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"}
    kernel = triton.compile(ASTSource(code_ops.unpack_code_rows, weights, constexprs={
        "BITS": 2, "BLOCK_N": 16, "BLOCK_K": 256}), target=target)
    assert kernel.asm["cubin"]
