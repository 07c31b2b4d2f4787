"""Recipes: schema errors located by file/line/field, resolution against real SAM2 models (every shipped recipe),
first-match-wins, and compilation to torchao's FqnToConfig."""

import re
import textwrap

import pytest
import torch
from torch import nn
from torchao.quantization import quantize_

from qsam2_ext import QSAM2PackedTensor
from qsam2_ext.recipes import RecipeError, explain, list_recipes, load_recipe
from qsam2_ext.sam2 import build_model

MINI = "configs/qsam2/qsam2_mini.yaml"
SIZES = ("t", "s", "b+", "l")
BITS = ("w2a4", "w2a8", "w3a8", "w4a8", "w8a8")
# The float islands of _sam2.1.yaml, written independently of its regexes.
ISLANDS = ("sam_mask_decoder.output_hypernetworks_mlps.", "sam_mask_decoder.iou_prediction_head.",
           "sam_mask_decoder.pred_obj_score_head.", "sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1",
           "obj_ptr_proj.", "obj_ptr_tpos_proj", "sam_prompt_encoder.mask_downscaling.6",
           "memory_encoder.mask_downsampler.encoder.12")
MEMORY = ("memory_attention.", "memory_encoder.")


def _targets(model):
    """Linear and 1x1 Conv2d layers, by their own definition (not the recipe code's)."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1)}


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def mini():
    return build_model(MINI)


def test_every_recipe_is_listed():
    names = set(list_recipes())
    assert {f"sam2.1_hiera_{s}_{b}" for s in SIZES for b in BITS} <= names
    assert "qsam2_mini_w4a8" in names and not any(n.startswith("_") for n in names)


def _check_shipped(size, model):
    targets = _targets(model)
    for bits in BITS:
        recipe = load_recipe(f"sam2.1_hiera_{size}_{bits}")
        w, a = map(int, re.fullmatch(r"w(\d)a(\d)", bits).groups())
        plans = {p.fqn: p for p in recipe.resolve(model)}
        assert set(plans) == set(targets)
        for name, p in plans.items():
            island = name.startswith(ISLANDS)
            assert p.skip == island, name
            if not island:
                assert (p.method, p.bits, p.group_size) == ("lsc", w, None), name
                assert p.act_bits == (None if name.startswith(MEMORY) else a), name
                assert p.vrc == name.startswith("image_encoder."), name
        assert recipe.spec.model == f"sam2.1_hiera_{size}"


@pytest.mark.parametrize("size", SIZES)
def test_shipped_recipes_resolve_on_their_real_models(size):
    _check_shipped(size, build_model(f"sam2.1_hiera_{size}"))  # random init: about 1 s even for hiera_l


def test_default_model_recipes(mini):
    for name in ("qsam2_mini_w4a8", "qsam2_mini_w2a8"):
        recipe = load_recipe(name)
        assert recipe.spec.model == "qsam2_mini"
        plans = recipe.resolve(mini)
        assert sum(not p.skip for p in plans) == sum(not n.startswith(ISLANDS) for n in _targets(mini))
    table = explain(recipe, plans)
    assert "image_encoder.trunk.blocks.0.attn.qkv" in table and "_sam2.1.yaml" in table


BASE = """\
model: configs/qsam2/qsam2_mini.yaml
defaults:
  bits: 2
  act_bits: 8
rules:
  - match: 're:sam_mask_decoder\\..*'
    skip: true
  - match: 're:image_encoder\\..*'
calibration:
  layers: ['re:image_encoder\\.trunk\\..*']
"""


def test_first_match_wins_and_child_rules_come_first(tmp_path, mini):
    _write(tmp_path, "base.yaml", BASE)
    _write(tmp_path, "child.yaml", """\
        extends: base.yaml
        defaults:
          act_bits: null
        rules:
          - match: image_encoder.trunk.blocks.0.attn.qkv
            bits: 8
            group_size: 64
          - match: 're:image_encoder\\.trunk\\.blocks\\.0\\..*'
            bits: 4
        """)
    plans = {p.fqn: p for p in load_recipe(str(tmp_path / "child.yaml")).resolve(mini)}
    qkv = plans["image_encoder.trunk.blocks.0.attn.qkv"]
    assert (qkv.bits, qkv.act_bits, qkv.group_size, qkv.effective_group_size) == (8, None, 64, None)  # 32 inputs
    assert plans["image_encoder.trunk.blocks.0.mlp.layers.0"].bits == 4
    assert plans["image_encoder.trunk.blocks.1.mlp.layers.0"].bits == 2  # the base's rule; defaults merged
    assert plans["sam_mask_decoder.transformer.layers.0.mlp.layers.0"].skip
    assert plans["memory_attention.layers.0.linear1"].skip and plans["memory_attention.layers.0.linear1"].rule is None
    assert plans["image_encoder.neck.convs.0.conv"].vrc is False and qkv.vrc


@pytest.mark.parametrize("text, line, field, message", [
    (BASE.replace("  bits: 2", "  bitz: 2"), 3, "defaults.bitz", "did you mean 'bits'"),
    (BASE.replace("  bits: 2", "  bits: 5"), 3, "defaults.bits", "must be one of"),
    (BASE.replace("    skip: true", "    skip: true\n    bits: 4"), 6, "rules[0]", "rule leaves layers in float: remove bits"),
    (BASE.replace("'re:image_encoder\\..*'\n", "'re:image_encoder\\.(.*'\n"), 8, "rules[1].match",
     "invalid regular expression"),
    (BASE.replace("  act_bits: 8\n", "  act_bits: 8\n  bits: 3\n"), 5, "defaults.bits", "duplicate key"),
    (BASE.replace("  bits: 2\n", "  bits: 2\n  method: pact\n  alpha_init: 2.0\n"), 10, "rules[1]",
     "alpha_init applies to method lsc"),
    (BASE.replace("  bits: 2\n", ""), 7, "rules[1].bits", "bits is set neither in this rule nor in defaults"),
    (BASE.replace("model: configs/qsam2/qsam2_mini.yaml\n", ""), 1, "model", "required field is missing"),
    ("model: x\nrules: [\n", 3, "", "invalid YAML"),
    (BASE + "training:\n  steps: 3\n  options: {box_prob: 2}\n", 11, "training", "box_prob must lie in [0, 1]"),
])
def test_schema_errors_name_file_line_and_field(tmp_path, text, line, field, message):
    path = _write(tmp_path, "r.yaml", text)
    with pytest.raises(RecipeError) as e:
        load_recipe(str(path))
    assert (e.value.file, e.value.line, e.value.field) == (str(path), line, field), str(e.value)
    assert message in str(e.value) and str(e.value).startswith(f"{path}:{line}")


@pytest.mark.parametrize("rule, message", [
    ("image_encoder.trunk.blocks.0.attn.qvk", "did you mean 'image_encoder.trunk.blocks.0.attn.qkv'"),
    ("image_encoder.trunk.patch_embed.proj", "is a Conv2d, not a quantization target"),
    ("re:decoder\\..*", "matches no layer"),
])
def test_rules_matching_nothing_are_errors_unless_optional(tmp_path, mini, rule, message):
    text = BASE.replace("rules:\n", f"rules:\n  - match: '{rule}'\n    bits: 4\n")
    with pytest.raises(RecipeError, match=re.escape(message)) as e:
        load_recipe(str(_write(tmp_path, "r.yaml", text))).resolve(mini)
    assert (e.value.line, e.value.field) == (6, "rules[0].match")
    text = text.replace("    bits: 4\n", "    bits: 4\n    optional: true\n", 1)
    load_recipe(str(_write(tmp_path, "r.yaml", text))).resolve(mini)


def test_errors_in_a_base_point_into_the_base(tmp_path, mini):
    _write(tmp_path, "base.yaml", BASE.replace("'re:sam_mask_decoder\\..*'", "'re:sam_mask_dekoder\\..*'"))
    child = _write(tmp_path, "child.yaml", "extends: base.yaml\nrules:\n  - match: obj_ptr_tpos_proj\n    skip: true\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(str(child)).resolve(mini)
    assert (e.value.file, e.value.line, e.value.field) == (str(tmp_path / "base.yaml"), 6, "rules[1].match")


def test_extends_errors(tmp_path):
    _write(tmp_path, "a.yaml", "extends: b.yaml\n")
    _write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(str(tmp_path / "a.yaml"))
    with pytest.raises(RecipeError, match="extends: no recipe file"):
        load_recipe(str(_write(tmp_path, "c.yaml", "extends: missing.yaml\n")))
    with pytest.raises(RecipeError, match="unknown recipe 'sam2.1_hiera_x_w2a8'"):
        load_recipe("sam2.1_hiera_x_w2a8")


def test_model_level_checks(tmp_path, mini):
    vrc_outside = BASE.replace("['re:image_encoder\\.trunk\\..*']", "['re:sam_mask_decoder\\.transformer\\..*']")
    with pytest.raises(RecipeError, match="VRC calibrates on image forwards") as e:
        load_recipe(str(_write(tmp_path, "r.yaml", vrc_outside))).resolve(mini)
    assert e.value.field == "calibration.layers[0]"
    memory = BASE.replace("'re:image_encoder\\..*'", "'re:(image_encoder|memory_attention)\\..*'")
    recipe = load_recipe(str(_write(tmp_path, "r.yaml", memory + "training:\n  steps: 5\n")))
    with pytest.raises(RecipeError, match="image-mode QAT never runs it"):
        recipe.resolve(mini)
    assert len(recipe.resolve(mini, qat=False)) == len(_targets(mini))  # PTQ: dynamic activations are fine


def test_to_torchao_quantizes_exactly_the_plan(mini):
    import copy

    model = copy.deepcopy(mini)
    recipe = load_recipe("qsam2_mini_w2a8")
    plans = recipe.resolve(model)
    config = recipe.to_torchao(model)
    assert len({id(c) for c in config.fqn_to_config.values()}) == 2  # W2A8 and weight-only memory path
    before = {n: m.weight.detach().clone() for n, m in _targets(model).items()}
    quantize_(model, config, filter_fn=None)
    after = _targets(model)
    for p in plans:
        weight = after[p.fqn].weight
        if p.skip:
            assert torch.equal(weight, before[p.fqn]), p.fqn
        else:
            assert isinstance(weight, QSAM2PackedTensor) and weight.bits == p.bits, p.fqn
            assert weight.act_bits == p.act_bits, p.fqn
    vrc = recipe.vrc_to_torchao(model, "prepare", plans)
    assert set(vrc.fqn_to_config) == {p.fqn for p in plans if p.vrc}
