"""The harness with the real Q-SAM2 module swap (torchao integration): prepare, train with the shared loop,
convert, save packed weights, and evaluate them with ``qsam2 eval --quantized``."""

import json

import torch
from helpers import TINY, tiny_model, write_sa1b
from torchao.quantization import FqnToConfig, quantize_

import qsam2_ext
from qsam2_ext import cli, qsam2_config
from qsam2_ext.core import FakeQuantizer
from qsam2_ext.sam2.data import open_dataset
from qsam2_ext.train import TrainConfig, parameter_groups, train

TARGETS = r"re:(image_encoder|sam_mask_decoder)\..*"


def test_qat_through_the_loop_then_packed_evaluation(tmp_path):
    write_sa1b(tmp_path / "data", n=2, objects=2)
    model = tiny_model(64)
    quantize_(model, FqnToConfig({TARGETS: qsam2_config(bits=2, act_bits=8, step="prepare")}), filter_fn=None)
    weights, quantizer = parameter_groups(model)
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantizer)]
    assert quantizers and {id(p) for p in quantizer} == {id(p) for q in quantizers for p in q.parameters()}
    alphas = {id(p): p.detach().clone() for p in quantizer}

    config = TrainConfig(steps=3, batch_size=2, lr=1e-4, quantizer_lr=1e-2, num_workers=0)
    train(model, open_dataset("sa1b", str(tmp_path / "data")), config, str(tmp_path / "run"), progress=False)
    assert any(not torch.equal(p, alphas[id(p)]) for p in quantizer)  # LSC's alpha learned in the loop

    model.eval()
    quantize_(model, FqnToConfig({TARGETS: qsam2_config(bits=2, act_bits=8, step="convert")}), filter_fn=None)
    path = qsam2_ext.save_quantized(model, tmp_path / "tiny.w2a8.pt")
    out = tmp_path / "eval.json"
    args = ["eval", "--format", "sa1b", "--data", str(tmp_path / "data"), "--model", "sam2.1_hiera_t",
            "--image-size", "64",
            *[f"--override={o}" for o in TINY], "--checkpoint", str(path), "--quantized", "--out", str(out),
            "--no-progress"]
    assert cli.main(args) == 0
    results = json.loads(out.read_text())
    assert results["results"]["point"]["instances"] == 4 and 0 <= results["results"]["box"]["mIoU"] <= 1
    assert cli.main(args[:-6] + ["--quantized"]) == 2  # no checkpoint: a clear error


def test_torchao_range_learning_scales_train_in_the_quantizer_group():
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig, initialize_fake_quantizers
    from torchao.quantization.qat.fake_quantizer import FakeQuantizerBase

    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    weight = IntxFakeQuantizeConfig(torch.int4, "per_channel", is_dynamic=False, range_learning=True)
    quantize_(net, QATConfig(weight_config=weight, step="prepare"))
    initialize_fake_quantizers(net, (torch.randn(2, 16),))
    weights, quantizer = parameter_groups(net)
    learned = {id(p) for m in net.modules() if isinstance(m, FakeQuantizerBase) for p in m.parameters()}
    assert learned and {id(p) for p in quantizer} == learned
    assert {id(p) for p in weights} == {id(p) for p in net.parameters()} - learned
