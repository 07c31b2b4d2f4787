"""The committed GPU results (benchmarks/results/speed.*) are what benchmarks/speed.py makes of its own JSONL, its
profile split by kind of kernel accounts for every kernel once, and it refuses options that cannot go together
before running anything (these run without a GPU)."""

import argparse
import json
import os
import shutil
import sys

import pytest

RESULTS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import speed  # noqa: E402


def test_committed_tables_are_rebuilt_exactly_from_the_committed_jsonl(tmp_path, capsys):
    shutil.copy(os.path.join(RESULTS, "speed.jsonl"), tmp_path)
    speed.summarize(str(tmp_path))
    capsys.readouterr()
    with open(os.path.join(RESULTS, "speed.md")) as committed, open(tmp_path / "speed.md") as rebuilt:
        assert rebuilt.read() == committed.read()
    with open(os.path.join(RESULTS, "speed.json")) as committed, open(tmp_path / "speed.json") as rebuilt:
        assert json.load(rebuilt) == json.load(committed)


def test_kernel_kinds_partition_each_profiles_gpu_time():
    with open(os.path.join(RESULTS, "speed.jsonl")) as f:
        profiles = [e["profile"] for e in map(json.loads, f) if e.get("profile", {}).get("kernel_families")]
    assert profiles, "no committed profile is split by kind of kernel"
    for profile in profiles:
        kinds = profile["kernel_families"]
        assert set(kinds) <= {family for family, _ in speed.KERNEL_FAMILIES} | {speed.kernel_family("")}
        assert sum(k["gpu_ms"] for k in kinds.values()) == pytest.approx(profile["gpu_ms_per_call"], rel=1e-9)


@pytest.mark.parametrize("name, kind", [
    ("nvjet_sm90_tst_192x128_64x5_1x2_h_bz_coopB_bias_TNT", "GEMM (cuBLAS/CUTLASS)"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128", "attention (cuDNN/flash SDPA)"),
    ("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized", "convolution (cuDNN)"),
    ("triton_poi_fused__to_copy_add_bitwise_and_bitwise_right_shift_mul_3", "inductor: weight unpacking"),
    ("triton_poi_fused_gelu_view_27", "inductor: other"),
    ("triton_red_fused__to_copy_amax_amin_clamp_floor_gelu_12", "inductor: activation quantization"),
    ("sm90_xmma_gemm_e4m3e4m3_e4m3f32_f32_tn_n_tilesize128x128x64", "GEMM (cuBLAS/CUTLASS)"),
    ("Memset (Device)", "other (copies, memsets, aten kernels)"),
    ("quantize_token_rows_0", "activation quantization (qsam2 one-pass kernel)"),
    ("unpack_code_rows_1", "weight unpacking (qsam2 kernel)"),
])
def test_kernel_kinds_by_name(name, kind):
    assert speed.kernel_family(name) == kind


def test_inductor_options_are_checked_against_inductors_config():
    assert speed.inductor_option("combo_kernels=True") == ("combo_kernels", True)
    with pytest.raises(argparse.ArgumentTypeError, match="not KEY=VALUE"):
        speed.inductor_option("no_such_option=1")
    with pytest.raises(argparse.ArgumentTypeError, match="not KEY=VALUE"):
        speed.inductor_option("combo_kernels")
    assert speed.inductor_option("triton.cudagraphs=True") == ("triton.cudagraphs", True)  # mode="reduce-overhead"


def test_rows_are_labelled_with_their_inductor_options_and_guard_filters():
    entry = {"row": "ours W2A16", "guard_filters": ["module guards skipped"], "inductor_options": {"combo_kernels": True}}
    assert speed.row_label(entry) == "ours W2A16 [combo_kernels=True, module guards skipped]"
    assert speed.row_label({"row": "bf16 compiled"}) == "bf16 compiled"
    assert speed.row_label({"row": "ours W2A16", "unwrapped": True}) == "ours W2A16 [unwrapped]"
    assert speed.row_label({"row": "ours W8A8", "integer_matmul": True}) == "ours W8A8 [integer_matmul]"


@pytest.mark.parametrize("flags, refusal", [
    (["--skip-module-guards", "--parts", "encoder", "predictor"], "cannot go with the predictor part"),
    (["--inductor", "triton.cudagraphs=True", "--parts", "encoder-graph"], "cannot capture them again"),
])
def test_conflicting_options_are_refused_before_anything_runs(flags, refusal, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speed.py", "--out", str(tmp_path / "out"), *flags])
    with pytest.raises(SystemExit, match=refusal):
        speed.main()
    assert not (tmp_path / "out").exists()


def test_act_quant_table_is_rebuilt_from_its_json_and_its_rows_compute_the_shipped_grid():
    import torch

    import act_quant

    with open(os.path.join(RESULTS, "act_quant.json")) as f:
        results = json.load(f)
    with open(os.path.join(RESULTS, "act_quant.md")) as f:
        assert f.read() == act_quant.markdown(results["meta"], results["rows"])
    h = torch.randn(32, 2304, dtype=torch.bfloat16) * 2  # eager: the benchmark's "before" row and what ships agree
    assert torch.equal(act_quant.gelu_quantized_one_pass(h), act_quant.gelu_quantized(h))


def test_quantizing_a_torchao_row_leaves_inductors_options_to_every_row_alike():
    import torch
    from torch._inductor import config
    from torchao.quantization import Int8Tensor

    before = config.get_config_copy()
    layers = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    speed.quantize_encoder(layers, "torchao_int8")
    assert isinstance(layers[0].weight, Int8Tensor) and isinstance(layers[2].weight, Int8Tensor)
    assert config.get_config_copy() == before  # torchao's default would turn on coordinate-descent tuning


def test_rows_named_for_a_code_product_are_traced_inside_integer_matmul():
    from qsam2_ext.integrations.torchao import packed_tensor

    import speed_rows

    assert set(speed_rows.INTEGER_ROWS) <= set(speed.ROWS)
    for row in speed.ROWS:
        with speed_rows.row_context(row):
            assert packed_tensor._INTEGER_MATMUL == (row in speed_rows.INTEGER_ROWS)
    with speed_rows.row_context("ours W8A8", integer_matmul=True):
        assert packed_tensor._INTEGER_MATMUL
