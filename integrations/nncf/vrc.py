"""VRC as an NNCF ``Algorithm``: it declares one statistic per Linear / 1x1 Conv2d input (the Gram matrix of its
input rows, accumulated by the core's ``GramObserver``), then applies the core's transactional closed form.

Usable alone (``calibrate_vrc``) or as a step of NNCF's ``Pipeline`` in front of its PTQ steps::

    pipeline = Pipeline([[VRCAlgorithm()]] + create_ptq_pipeline(subset_size=64).pipeline_steps)
    quantized = pipeline.run(GraphModelWrapper(wrap_model(model), example_input), nncf.Dataset(batches)).model
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from qsam2_ext.core import DEFAULT_LAM_REL, GramObserver, VRCReport, apply_vrc, input_rows, is_linear_like, weight_matrix
from qsam2_ext.core.vrc import _check_lam_rel
from qsam2_ext.sam2 import hiera

from . import _nncf as N
from .graph import Select, find_targets

_STAT = "gram"


class _RowsReducer(N.TensorReducerBase):
    """The layer's input as ``(tokens, in)`` rows, without SAM2's window-padding rows (``qsam2_ext.sam2.hiera``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._module = module

    def _reduce_out_of_place(self, x):
        rows = input_rows(self._module, x[0].data)
        mask = hiera.row_mask(self._module)
        rows = rows.reshape(-1, rows.shape[-1])
        if mask is not None:
            rows = rows[mask.reshape(-1).to(torch.bool)]
        return [N.Tensor(rows)]

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)


class _GramAggregator(N.AggregatorBase):
    """Streams reduced rows into a core ``GramObserver`` (float64 Gram, token count); aggregates to the observer."""

    def __init__(self, observer: GramObserver, num_samples: Optional[int]):
        super().__init__(num_samples=num_samples)
        self._observer = observer

    def _register_reduced_input_impl(self, x):
        self._observer.update(x.data)

    def _aggregate_impl(self):
        return self._observer

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)


class VRCAlgorithm(N.Algorithm):
    """Variance-Reduced Calibration of the Linear / 1x1 Conv2d layers (``select(fqn, module)`` picks; default
    all) on NNCF's calibration dataset. ``subset_size``: calibration items to use (default: the whole dataset).
    ``reports`` holds one ``VRCReport`` per layer after ``apply``; nothing is written unless every layer can be.
    """

    def __init__(self, lam_rel: float = DEFAULT_LAM_REL, select: Optional[Select] = None,
                 subset_size: Optional[int] = None, ignored_scope: Optional["N.IgnoredScope"] = None):
        self.lam_rel = _check_lam_rel(lam_rel)
        if subset_size is not None and (isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 1):
            raise ValueError(f"subset_size must be a positive int or None, got {subset_size!r}")
        self.select, self.subset_size, self.ignored_scope = select, subset_size, ignored_scope
        self.reports: dict[str, VRCReport] = {}
        self._layers: dict[str, tuple[nn.Module, list[str]]] = {}
        self._masking = False
        self._algorithm_key = f"QSAM2_VRC_{id(self)}"

    @property
    def available_backends(self):
        return [N.BackendType.TORCH]

    def _targets(self, model: nn.Module, graph):
        ignored = set()
        if self.ignored_scope is not None:
            ignored = N.get_ignored_node_names_from_ignored_scope(self.ignored_scope, graph, strict=False)

        def select(fqn, module):
            return is_linear_like(module) and (self.select is None or self.select(fqn, module))

        targets = [t for t in find_targets(model, graph, select) if t.node not in ignored]
        if not targets:
            raise ValueError("VRC: no Linear or 1x1 Conv2d layer selected in the traced model")
        return targets

    def get_statistic_points(self, model, graph):
        container = N.StatisticPointsContainer()
        self._layers = {}
        observers = {}
        for t in self._targets(model.model, graph):
            if t.fqn not in observers:
                observers[t.fqn] = GramObserver(weight_matrix(t.module).shape[1], t.fqn)
                self._layers[t.fqn] = (t.module, [])
            self._layers[t.fqn][1].append(t.node)
            collector = N.TensorCollector()
            collector.register_statistic_branch(_STAT, _RowsReducer(t.module),
                                                _GramAggregator(observers[t.fqn], self.subset_size))
            point = N.PTTargetPoint(N.TargetType.OPERATOR_PRE_HOOK, t.node, input_port_id=0)
            container.add_statistic_point(N.StatisticPoint(point, collector, self._algorithm_key))
        if not self._masking:  # SAM2 window-padding masks are recorded while statistics are collected
            hiera.acquire()
            self._masking = True
        return container

    def apply(self, model, graph, statistic_points=None, dataset=None):
        if self._masking:
            hiera.release()
            self._masking = False
        if statistic_points is None:
            raise ValueError("VRCAlgorithm.apply needs the statistics declared by get_statistic_points")
        layers = []
        for fqn, (module, nodes) in self._layers.items():
            observer = None
            for node in nodes:
                for collector in statistic_points.get_algo_statistics_for_node(node, lambda p: True,
                                                                               self._algorithm_key):
                    observer = collector.get_statistics()[_STAT] or observer
            if observer is None:
                observer = GramObserver(weight_matrix(module).shape[1], fqn)  # saw nothing: check() names it
            layers.append((fqn, module, observer))
        self.reports = apply_vrc(layers, self.lam_rel)
        return model


def calibrate_vrc(model: nn.Module, calibration_dataset, lam_rel: float = DEFAULT_LAM_REL,
                  select: Optional[Select] = None, subset_size: Optional[int] = None,
                  ignored_scope=None) -> dict[str, VRCReport]:
    """Apply VRC to ``model`` in place through NNCF (standalone use; then ``nncf.quantize`` as usual).

    ``calibration_dataset`` is an ``nncf.Dataset`` (its items are what the model's forward takes).
    Returns the per-layer reports. The model is NNCF-wrapped (``wrap_model``: no hooks, same state dict).
    """
    example = next(iter(calibration_dataset.get_inference_data()))
    wrapper = N.GraphModelWrapper(N.wrap_model(model), example)
    algorithm = VRCAlgorithm(lam_rel, select, subset_size, ignored_scope)
    N.Pipeline([[algorithm]]).run(wrapper, calibration_dataset)
    return algorithm.reports
