"""YAML recipes: which SAM2 layer gets which quantization, one source of truth for every framework.

API (framework-neutral; the torchao compilation is one method, NNCF builds its pipeline from the same plans)::

    from qsam2_ext.recipes import load_recipe, list_recipes
    recipe = load_recipe("sam2.1_hiera_t_w2a8")          # a shipped name, or a path to a .yaml file
    plans = recipe.resolve(model)                          # list[LayerPlan], one per Linear / 1x1 Conv2d
    for p in plans:
        p.fqn, p.module_type, p.skip, p.method, p.bits, p.act_bits, p.group_size, p.effective_group_size,
        p.alpha_init, p.act_alpha_init, p.momentum, p.act_per_channel, p.vrc, p.note
        p.quant_options()                                  # kwargs of qsam2_config / QSAM2Config
    recipe.spec.calibration   # vrc, layers, lam_rel, images, batch_size
    recipe.spec.training      # steps, batch_size, lr, quantizer_lr, clip_length, losses, options -> .train_config()
    recipe.spec.output        # format (safetensors | pt), scale_dtype
    recipe.to_torchao(model, step=None | "prepare" | "convert")   # FqnToConfig of QSAM2Config
    recipe.vrc_to_torchao(model, "prepare" | "convert")          # FqnToConfig of VRCConfig (or None)

Every problem raises ``RecipeError`` (a ``ValueError``) naming the file, the line and the field: schema errors
when loading, and, in ``resolve``, a rule or calibration pattern matching no layer (unless ``optional: true``).
``resolve`` never modifies the model, so validating first leaves nothing half-done.

A recipe file has ``model``, ``defaults`` (quantization fields), ``rules`` (ordered; ``match`` is an exact
module name or ``re:<regex>`` matched in full; the first matching rule decides, as in torchao's FqnToConfig;
``skip: true`` keeps layers in float), ``calibration``, ``training``, ``output`` and optionally ``extends: BASE``
(a shipped name or a path relative to the file): the child's fields override the base's and its rules are tried
before the base's.
"""

from __future__ import annotations

import os
from importlib.resources import files
from typing import Optional

from .explain import explain
from .plan import LayerPlan, Recipe
from .source import RecipeError, load_located

SHIPPED_PACKAGE = "qsam2_ext.recipes.shipped"  # the repository's top-level recipes/ folder (package data)
DEFAULT_RECIPE = "qsam2_mini_w4a8"  # the embedded default model's recipe (`qsam2 quantize` with no arguments)


def _shipped_dir() -> str:
    return str(files(SHIPPED_PACKAGE))


def list_recipes(include_bases: bool = False) -> list[str]:
    """Names of the shipped recipes (bases, named ``_*``, only with ``include_bases``)."""
    names = sorted(f[:-5] for f in os.listdir(_shipped_dir()) if f.endswith(".yaml"))
    return [n for n in names if include_bases or not n.startswith("_")]


def recipe_path(name_or_path: str, relative_to: Optional[str] = None) -> str:
    """The file of a shipped recipe name, or of a path (relative to ``relative_to`` or the working folder)."""
    candidate = os.path.join(relative_to or "", os.path.expanduser(name_or_path))
    if os.path.isfile(candidate):
        return candidate
    shipped = os.path.join(_shipped_dir(), name_or_path + ".yaml")
    if os.sep not in name_or_path and os.path.isfile(shipped):
        return shipped
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        raise RecipeError(f"no recipe file at {candidate}")
    close = [n for n in list_recipes(True) if name_or_path.split("_")[0] in n][:5]
    raise RecipeError(f"unknown recipe {name_or_path!r}: neither a file nor a shipped recipe "
                      f"({', '.join(close) if close else 'qsam2 recipe list shows them'})")


def load_recipe(name_or_path: str) -> Recipe:
    """Load and validate a recipe (shipped name or YAML path); raises ``RecipeError`` with file and line."""
    path = recipe_path(name_or_path)
    name = os.path.splitext(os.path.basename(path))[0]
    return Recipe(name, load_located(path, recipe_path), path)


__all__ = ["DEFAULT_RECIPE", "LayerPlan", "Recipe", "RecipeError", "explain", "list_recipes", "load_recipe",
           "recipe_path"]
