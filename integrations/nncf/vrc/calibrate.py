"""Q-SAM2's VRC entry points on NNCF's ``VarianceReducedCalibration``: layer selection by module, per-layer
``VRCReport``s, and SAM2's window padding kept out of the statistics.

Hiera's windowed blocks pad their token grid before partitioning it into windows: ``attn.qkv`` then sees all-zero
rows and ``attn.proj`` garbage rows at padded positions, which the calibration statistics must skip. The masks
are computed from the block's input geometry (``qsam2_ext.sam2.hiera.block_row_masks``): a statistic point before
each such block's ``norm1`` records them, and the Gram reducers of that block's ``qkv`` / ``proj`` calls consume
them in the same forward. Both are NNCF statistic points, inserted and removed by NNCF's statistics aggregator:
nothing is installed in the model or the process outside statistics collection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from qsam2_ext.core import DEFAULT_LAM_REL, VRCReport, is_linear_like, vrc_report
from qsam2_ext.core.vrc import _check_lam_rel
from qsam2_ext.sam2 import hiera

from .. import _nncf as N
from ..graph import const_input
from .algorithm import GramReducer, VarianceReducedCalibration

Select = Callable[[str, nn.Module], bool]


@dataclass
class _BlockInputShape(N.TensorStatistic):
    """Shape of a Hiera block's input (what its padding masks were computed from)."""

    SHAPE_STAT: ClassVar[str] = "shape"

    shape: N.Tensor

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _BlockInputShape) and bool((self.shape.data == other.shape.data).all())


class _LastAggregator(N.AggregatorBase):
    def _register_reduced_input_impl(self, x):
        self._last = x

    def _aggregate_impl(self):
        return self._last


class _BlockMasksReducer(N.TensorReducerBase):
    """Before a windowed Hiera block: computes the padding masks of its ``qkv`` / ``proj`` rows into ``masks``."""

    def __init__(self, block: nn.Module, masks: dict):
        super().__init__()
        self._block, self._masks = block, masks

    def _reduce_out_of_place(self, x):
        self._masks.update(hiera.block_row_masks(self._block, x[0].data))
        return [N.Tensor(torch.tensor(x[0].shape))]

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)


class _MaskedGramReducer(GramReducer):
    """``GramReducer`` over the rows that ``masks`` marks as real tokens for ``layer`` (consumed: one per call)."""

    def __init__(self, channel_axis: int, layer: nn.Module, masks: dict):
        super().__init__(channel_axis)
        self._layer, self._masks = layer, masks

    def _rows(self, x):
        rows = super()._rows(x)
        mask = self._masks.pop(self._layer, None)
        return rows if mask is None else N.Tensor(rows.data[mask.reshape(-1).to(torch.bool)])

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)


class VRCAlgorithm(VarianceReducedCalibration):
    """Variance-Reduced Calibration of the Linear / 1x1 Conv2d layers (``select(fqn, module)`` picks; default
    all) on NNCF's calibration dataset, as an NNCF ``Algorithm`` (a ``Pipeline`` step or ``calibrate_vrc``).
    ``subset_size``: calibration items to use (default: the whole dataset). ``ignored_scope``: NNCF's, validated
    against the graph. ``reports`` holds one ``VRCReport`` per layer after ``apply``; nothing is written unless
    every layer can be.
    """

    def __init__(self, lam_rel: float = DEFAULT_LAM_REL, select: Optional[Select] = None,
                 subset_size: Optional[int] = None, ignored_scope: Optional["N.IgnoredScope"] = None):
        super().__init__(subset_size=subset_size, lam_rel=_check_lam_rel(lam_rel), ignored_scope=ignored_scope)
        self.select = select
        self.reports: dict[str, VRCReport] = {}
        self._masks: dict = {}
        self._masked_layers: set = set()

    @staticmethod
    def _module(model, weight_name: str) -> Optional[nn.Module]:
        fqn = weight_name.rpartition(".")[0]
        try:
            return N.unwrap(model).get_submodule(fqn)
        except AttributeError:
            return None

    def _is_target(self, model, graph, weight_name, nodes) -> bool:
        module = self._module(model, weight_name)
        if module is None or not weight_name.endswith(".weight") or not is_linear_like(module):
            return False
        return self.select is None or self.select(weight_name[: -len(".weight")], module)

    def _create_reducer(self, model, graph, node):
        layer = self._module(model, self._backend_entity.get_weight_name(node, graph))
        if layer in self._masked_layers:
            return _MaskedGramReducer(self._backend_entity.get_activation_channel_axis(node), layer, self._masks)
        return super()._create_reducer(model, graph, node)

    def get_statistic_points(self, model, graph):
        self._set_backend_entity(model)
        self._masks = {}  # filled and consumed during one statistics collection
        blocks = _windowed_blocks(N.unwrap(model), graph)
        self._masked_layers = {layer for block in blocks.values() for layer in (block.attn.qkv, block.attn.proj)}
        container = super().get_statistic_points(model, graph)
        for node_name, block in blocks.items():
            collector = N.TensorCollector(_BlockInputShape)
            collector.register_statistic_branch(_BlockInputShape.SHAPE_STAT, _BlockMasksReducer(block, self._masks),
                                                _LastAggregator(num_samples=self._subset_size))
            point = N.PTTargetPoint(N.TargetType.OPERATOR_PRE_HOOK, node_name, input_port_id=0)
            container.add_statistic_point(N.StatisticPoint(point, collector, self._algorithm_key))
        return container

    def apply(self, model, graph, statistic_points=None, dataset=None):
        self.reports = {}
        self._masks = {}
        return super().apply(model, graph, statistic_points, dataset)

    def _on_update(self, weight_name, weight, new_weight, gram, num_rows, lam):
        fqn = weight_name[: -len(".weight")]
        self.reports[fqn] = vrc_report(fqn, weight.data, new_weight.data, gram.data, int(num_rows), lam)


def _windowed_blocks(model: nn.Module, graph) -> dict[str, nn.Module]:
    """``{node name of norm1's layer_norm: block}`` for the windowed Hiera blocks of ``model``."""
    try:
        from sam2.modeling.backbones.hieradet import MultiScaleBlock
    except ImportError:  # no sam2: no Hiera blocks either
        return {}

    blocks = {f"{name}.norm1.weight": m for name, m in model.named_modules()
              if isinstance(m, MultiScaleBlock) and m.window_size > 0}
    if not blocks:
        return {}
    found = {}
    for node in graph.get_nodes_by_metatypes([N.metatypes.PTLayerNormMetatype]):
        const = const_input(node, node.metatype.weight_port_ids[0], graph)
        name = getattr(getattr(const, "layer_attributes", None), "name", None)
        if name in blocks:
            found[node.node_name] = blocks[name]
    return found


def calibrate_vrc(model: nn.Module, calibration_dataset, lam_rel: float = DEFAULT_LAM_REL,
                  select: Optional[Select] = None, subset_size: Optional[int] = None,
                  ignored_scope=None) -> dict[str, VRCReport]:
    """Apply VRC to ``model`` in place through NNCF (standalone use; then ``nncf.quantize`` as usual).

    ``calibration_dataset`` is an ``nncf.Dataset`` (its items are what the model's forward takes).
    Returns the per-layer reports. The model is NNCF-wrapped (``wrap_model``: no hooks, same state dict). On any
    error the model's weights and hooks are as they were.
    """
    backend = N.get_backend(model)
    if backend != N.BackendType.TORCH:
        raise N.UnsupportedBackendError(f"calibrate_vrc supports torch.nn.Module models, not {backend.value}")
    algorithm = VRCAlgorithm(lam_rel, select, subset_size, ignored_scope)
    example = next(iter(calibration_dataset.get_inference_data()), None)
    if example is None:
        raise N.ValidationError("calibrate_vrc: the calibration dataset is empty")
    wrapped = N.wrap_model(model)
    storage = N.get_hook_storage(wrapped)
    before = {name for name, _ in storage.named_hooks()}
    try:
        N.Pipeline([[algorithm]]).run(N.GraphModelWrapper(wrapped, example), calibration_dataset)
    except BaseException:
        for name in [n for n, _ in storage.named_hooks() if n not in before]:
            storage.delete_hook(name)  # NNCF's statistics hooks, left behind when a forward fails mid-collection
        raise
    return algorithm.reports
