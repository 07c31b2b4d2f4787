"""VRC on the real SAM2.1 image encoders built from the sam2 package's configs (no checkpoint), at 256x256."""

import pytest
import torch

from qsam2_ext.core import VRCCalibration, is_linear_like
from qsam2_ext.sam2 import build_model, padding_masks, row_mask, warm_position_encodings

# Linear layers of the Hiera trunk, per size (sam2 1.1 configs), plus the neck's four 1x1 convs.
TRUNK_LINEARS = {"t": 51, "s": 67, "b+": 99, "l": 195}


@pytest.fixture(scope="module")
def tiny():
    return build_model("sam2.1_hiera_t")


def _images(n, size=256):
    return [torch.randn(1, 3, size, size) for _ in range(n)]


@pytest.mark.parametrize("size", ["t", "s", "b+", pytest.param("l", marks=pytest.mark.slow)])
def test_vrc_handles_every_linear_of_real_encoders(size):
    model = build_model(f"sam2.1_hiera_{size}")
    enc = model.image_encoder
    images = _images(3)
    with torch.no_grad():
        before = enc(images[0])["vision_features"]
    with padding_masks(), VRCCalibration.for_model(enc, row_masks=row_mask) as calib, torch.no_grad():
        for img in images:
            enc(img)
    reports = calib.apply(lam_rel=1e-2)
    linears = [n for n, m in enc.named_modules() if is_linear_like(m)]
    assert len(linears) == TRUNK_LINEARS[size] + 4 and sorted(reports) == sorted(linears)
    transitions = [n for n in reports if n.endswith(".proj") and ".attn." not in n]
    assert len(transitions) == 3  # the stage-transition skip projections are calibrated too
    for r in reports.values():
        assert r.tokens > 0 and 0 < r.fro_ratio <= 1.0 + 1e-9 and 0 <= r.rel_output_error < 0.01
    with torch.no_grad():
        after = enc(images[0])["vision_features"]
    rel = float((after - before).norm() / before.norm())
    assert rel < 0.2  # calibrated on these very images: the encoder output is kept


def _capture_inputs(module, store, key):
    return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0].detach()))


@pytest.mark.parametrize("block_index", [4, 10])  # stage-3 windowed block (ws 14 on a 16x16 grid); q-pool transition
def test_padded_rows_are_excluded_on_a_real_hiera_block(tiny, block_index):
    from sam2.modeling.backbones.utils import window_unpartition

    block = tiny.image_encoder.trunk.blocks[block_index]
    seen = {}
    hooks = [
        _capture_inputs(block, seen, "block"),
        _capture_inputs(block.attn.qkv, seen, "qkv"),
        _capture_inputs(block.attn.proj, seen, "proj"),
    ]
    layers = {"qkv": block.attn.qkv, "proj": block.attn.proj}
    images = torch.randn(2, 3, 256, 256)
    with padding_masks(), VRCCalibration(layers, row_masks=row_mask) as calib, torch.no_grad():
        tiny.image_encoder(images)
    for h in hooks:
        h.remove()
    unmasked = VRCCalibration(layers)
    with unmasked, torch.no_grad():
        tiny.image_encoder(images)

    # Independent references: qkv sees norm1 of the block input (no padding); proj's real rows are those
    # window_unpartition keeps (on the pooled grid at a transition).
    x = seen["block"]
    assert block.window_size > 0 and x.shape[1] % block.window_size  # this block really pads
    real_qkv = block.norm1(x).reshape(-1, x.shape[-1]).double()
    obs = calib.observers["qkv"]
    assert obs.tokens == real_qkv.shape[0] < seen["qkv"][..., 0].numel()
    torch.testing.assert_close(obs.gram, real_qkv.T @ real_qkv, rtol=1e-5, atol=1e-6)

    ws, (h, w) = block.window_size, x.shape[1:3]
    if block.q_stride:
        ws, h, w = ws // block.q_stride[0], h // block.q_stride[0], w // block.q_stride[1]
    pad = ((h + ws - 1) // ws * ws, (w + ws - 1) // ws * ws)
    real_proj = window_unpartition(seen["proj"], ws, pad, (h, w)).reshape(-1, seen["proj"].shape[-1]).double()
    obs = calib.observers["proj"]
    assert obs.tokens == real_proj.shape[0]
    torch.testing.assert_close(obs.gram, real_proj.T @ real_proj, rtol=1e-5, atol=1e-6)
    # without the masks the padding rows do enter the statistics
    assert unmasked.observers["proj"].tokens > obs.tokens


@pytest.mark.parametrize("image_size, sides", [(256, [64, 32, 16, 8]), (1024, [256, 128, 64, 32])])
def test_warmed_models_hold_the_position_tables_their_first_call_would_add(image_size, sides):
    """A call that adds no table leaves nothing for dynamo to recompile on (SAM2 caches them in a dict it guards)."""
    import copy

    from sam2.modeling.position_encoding import PositionEmbeddingSine

    model = build_model("sam2.1_hiera_t", image_size=image_size)
    neck, memory = model.image_encoder.neck.position_encoding, model.memory_encoder.position_encoding
    if not torch.cuda.is_available():  # sam2 fills them ahead (on the GPU, whatever the model's device) only there
        assert not neck.cache and not memory.cache
    warm_position_encodings(model)
    assert set(neck.cache) >= {(s, s) for s in sides} and (image_size // 16,) * 2 in memory.cache
    for encoding in (neck, memory):
        assert isinstance(encoding, PositionEmbeddingSine)
        fresh = copy.deepcopy(encoding)
        fresh.cache = {}
        for key, table in encoding.cache.items():  # what the module computes without its cache
            assert torch.equal(table, fresh(torch.zeros(1, 1, *key, device=table.device))[0])
    if image_size == 256:
        tables = {key: table.clone() for key, table in neck.cache.items()}
        with torch.inference_mode():
            model.image_encoder(torch.randn(1, 3, image_size, image_size))
        assert neck.cache.keys() == tables.keys()
        assert all(torch.equal(neck.cache[key], table) for key, table in tables.items())


@pytest.mark.slow
def test_a_model_with_warm_position_tables_compiles_its_encoder_once():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = build_model("sam2.1_hiera_t", image_size=256)
    warm_position_encodings(model)
    encoder = model.image_encoder.eval()
    encoder.compile(dynamic=False)
    with torch.inference_mode():
        for _ in range(2):
            encoder(torch.randn(1, 3, 256, 256))
    assert counters["frames"]["total"] == 1
