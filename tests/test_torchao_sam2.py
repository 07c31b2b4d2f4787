"""The whole Q-SAM2 flow through torchao on the real SAM2.1 models (built from the sam2 package configs, no
checkpoint): VRC -> calibration -> convert -> QAT prepare -> training steps -> convert, then SAM2's own predictors,
and the save / fresh-build / load path."""

import numpy as np
import pytest
import torch
from torch import nn
from torchao.quantization import FqnToConfig, quantize_

import qsam2_ext
from qsam2_ext import QSAM2PackedTensor, qsam2_config, vrc_config
from qsam2_ext.core import FakeQuantized, is_linear_like
from qsam2_ext.sam2 import build_model
from qsam2_ext.sam2.images import PHOTOS, load_photo, photo_batch

TRUNK_LINEARS = {"t": 51, "s": 67, "b+": 99, "l": 195}


def linear_like(module, fqn):
    return is_linear_like(module)


def _features(enc, images):
    return torch.cat([enc(img[None])["vision_features"] for img in images])


@pytest.mark.parametrize("size", ["t", "s", "b+", pytest.param("l", marks=pytest.mark.slow)])
def test_whole_flow_on_real_image_encoders(size):
    torch.manual_seed(0)
    enc = build_model(f"sam2.1_hiera_{size}").image_encoder
    images = photo_batch(PHOTOS[:3], 256)
    with torch.no_grad():
        teacher = _features(enc, images)

    quantize_(enc, vrc_config(step="prepare"), filter_fn=linear_like)
    with torch.no_grad():
        _features(enc, images)
    quantize_(enc, vrc_config(step="convert"), filter_fn=linear_like)
    assert len(qsam2_ext.vrc_reports(enc)) == TRUNK_LINEARS[size] + 4  # trunk Linears + neck 1x1 convs

    cfg = dict(bits=2, act_bits=8, group_size=64)  # 64 does not divide B+'s 112/224 inputs: per-channel fallback
    quantize_(enc, qsam2_config(step="prepare", **cfg), filter_fn=linear_like)
    assert sum(isinstance(m, FakeQuantized) for m in enc.modules()) == TRUNK_LINEARS[size] + 4
    enc.train()
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-4)
    for step in range(2):  # distillation from the float encoder
        opt.zero_grad()
        loss = nn.functional.mse_loss(_features(enc, images[:2]), teacher[:2])
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        fake = _features(enc, images)
    quantize_(enc, qsam2_config(step="convert", **cfg), filter_fn=linear_like)
    packed = [m for m in enc.modules() if isinstance(getattr(m, "weight", None), QSAM2PackedTensor)]
    assert len(packed) == TRUNK_LINEARS[size] + 4
    with torch.no_grad():
        real = _features(enc, images)
    torch.testing.assert_close(real, fake, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def quantized_tiny(tmp_path_factory):
    """sam2.1_hiera_t as a video predictor (it is a SAM2Base too), encoder W2A8 after VRC + QAT, the rest W4."""
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_t", video=True)
    images = photo_batch(PHOTOS[:2], 1024)
    enc = model.image_encoder
    quantize_(enc, vrc_config(step="prepare"), filter_fn=linear_like)
    with torch.no_grad():
        _features(enc, images)
    quantize_(enc, vrc_config(step="convert"), filter_fn=linear_like)
    prepare = qsam2_config(bits=2, act_bits=8, step="prepare")
    quantize_(model, FqnToConfig({r"re:image_encoder\..*": prepare}), filter_fn=None)
    with qsam2_ext.core.observing(model), torch.no_grad():
        _features(enc, images)
    quantize_(model, FqnToConfig({r"re:image_encoder\..*": qsam2_config(bits=2, act_bits=8, step="convert"),
                                  r"re:(sam_mask_decoder|memory_attention|memory_encoder)\..*": qsam2_config(bits=4)}),
              filter_fn=None)
    path = qsam2_ext.save_quantized(model, tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_t.w2a8.safetensors")
    return model, path


def test_sizes_2bit_encoder_linears_of_hiera_t():
    model = build_model("sam2.1_hiera_t").to(torch.bfloat16)
    quantize_(model.image_encoder.trunk, qsam2_config(bits=2))
    report = qsam2_ext.storage_report(model.image_encoder.trunk)
    assert report["packed_ratio_vs_bf16"] <= 0.14


def test_image_predictor_runs_unchanged(quantized_tiny):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model, _ = quantized_tiny
    predictor = SAM2ImagePredictor(model)
    image = load_photo("coffee")
    with torch.inference_mode():
        predictor.set_image(image)
        masks, scores, low_res = predictor.predict(point_coords=np.array([[300, 200]]), point_labels=np.array([1]))
        box_masks, _, _ = predictor.predict(box=np.array([100, 80, 420, 330]), multimask_output=False)
    assert masks.shape == (3, *image.shape[:2]) and box_masks.shape == (1, *image.shape[:2])
    assert np.isfinite(scores).all() and np.isfinite(low_res).all()


def test_video_predictor_runs_unchanged(quantized_tiny, tmp_path):
    from PIL import Image

    model, _ = quantized_tiny
    frames = tmp_path / "frames"
    frames.mkdir()
    base = load_photo("astronaut")
    for i in range(3):  # a short clip: the photo shifting right
        Image.fromarray(np.roll(base, 8 * i, axis=1)).save(frames / f"{i:05d}.jpg")
    with torch.inference_mode():
        state = model.init_state(video_path=str(frames))
        model.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([[256, 200]], dtype=np.float32),
                                    labels=np.array([1], np.int32))
        outputs = {idx: logits for idx, _, logits in model.propagate_in_video(state)}
    assert sorted(outputs) == [0, 1, 2]
    assert all(o.shape == (1, 1, 512, 512) and torch.isfinite(o).all() for o in outputs.values())


def test_saved_model_loads_into_a_fresh_build_with_identical_outputs(quantized_tiny):
    model, path = quantized_tiny
    float_model = build_model("sam2.1_hiera_t", video=True)
    targeted = {f"{n}.weight" for n, m in float_model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                and n.split(".")[0] in ("image_encoder", "sam_mask_decoder", "memory_attention", "memory_encoder")}
    fresh = qsam2_ext.load_quantized(float_model, path)
    packed = {n for n, t in fresh.state_dict().items() if isinstance(t, QSAM2PackedTensor)}
    assert packed == targeted
    image = photo_batch(["chelsea"], 1024)
    with torch.no_grad():
        a, b = model.image_encoder(image), fresh.image_encoder(image)
    assert torch.equal(a["vision_features"], b["vision_features"])
    for x, y in zip(a["backbone_fpn"], b["backbone_fpn"]):
        assert torch.equal(x, y)
