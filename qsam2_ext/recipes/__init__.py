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
(a shipped name, or the name of a file in the same folder: a recipe never names a path): the child's fields override the base's and its rules are tried
before the base's.
"""

from __future__ import annotations

import os
from importlib.resources import files

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


def _unknown(name: str) -> RecipeError:
    close = [n for n in list_recipes(True) if name.split("_")[0] in n][:5]
    return RecipeError(f"unknown recipe {name!r}: neither a file nor a shipped recipe "
                       f"({', '.join(close) if close else 'qsam2 recipe list shows them'})")


def shipped_recipe_path(name: str) -> str:
    """The file of a shipped recipe (``RecipeError`` if there is none by that name)."""
    path = os.path.join(_shipped_dir(), name + ".yaml")
    if "/" in name or os.sep in name or name.startswith(".") or not os.path.isfile(path):
        raise _unknown(name)
    return path


def recipe_path(name_or_path: str) -> str:
    """The file of a recipe the caller names: a path (relative to the working folder), else a shipped name."""
    candidate = os.path.expanduser(name_or_path)
    if os.path.isfile(candidate):
        return candidate
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        raise RecipeError(f"no recipe file at {candidate}")
    return shipped_recipe_path(name_or_path)


def base_recipe_path(name: str, folder: str) -> str:
    """The file an ``extends`` names: a file beside the recipe (``name`` or ``name.yaml``) or a shipped recipe.
    The name comes from a file, so it may not be a path (no folders, no ``..``)."""
    if os.path.isabs(name) or "/" in name or "\\" in name or name.startswith(".") or len(name) > 128:
        raise RecipeError(f"extends names a shipped recipe or a file beside this one, not a path: {name[:80]!r}")
    for candidate in (name, name + ".yaml"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    if name.endswith((".yaml", ".yml")):
        raise RecipeError(f"no recipe file {name} beside this recipe (in {folder})")
    return shipped_recipe_path(name)


def load_recipe(name_or_path: str) -> Recipe:
    """Load and validate a recipe (shipped name or YAML path); raises ``RecipeError`` with file and line."""
    path = recipe_path(name_or_path)
    name = os.path.splitext(os.path.basename(path))[0]
    return Recipe(name, load_located(path, base_recipe_path), path)


__all__ = ["DEFAULT_RECIPE", "LayerPlan", "Recipe", "RecipeError", "explain", "list_recipes", "load_recipe",
           "recipe_path", "shipped_recipe_path"]
