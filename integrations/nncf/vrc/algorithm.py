"""Variance-Reduced Calibration (VRC, Q-SAM2 arXiv 2506.09782) as an NNCF post-training algorithm.

Every linear layer ``y = x W^T + b`` whose weight is a constant gets the closed-form update that keeps its output
on the calibration data while shrinking the weight's Frobenius norm::

    W' = argmin_V ||X V^T - X W^T||^2 + lam ||V||^2 = W G (G + lam I)^-1,    G = X^T X,    lam = lam_rel tr(G) / d_in

The statistic is the Gram matrix ``G`` of the layer's input rows (float64, summed over the calibration subset) and
the number of rows, kept in a ``GramTensorStatistic`` so NNCF's statistics caching can dump and load it. Reducers
and aggregators only collect; the statistics are validated in ``apply``, which computes every update before it
writes the first one. A weight shared by several calls is fitted to the rows of all of them, and left unchanged
when one of its calls is in the ignored scope.

This file holds no project code: it is written in NNCF's algorithm layout so that it can be proposed upstream as is
(``scripts/upstream_nncf.py`` builds the patch from it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import nncf
from nncf import Dataset
from nncf.common.factory import ModelTransformerFactory
from nncf.common.graph.graph import NNCFGraph
from nncf.common.graph.graph import NNCFNode
from nncf.common.graph.transformations.layout import TransformationLayout
from nncf.common.logging import nncf_logger
from nncf.common.tensor_statistics.collectors import AggregatorBase
from nncf.common.tensor_statistics.collectors import TensorCollector
from nncf.common.tensor_statistics.collectors import TensorReducerBase
from nncf.common.tensor_statistics.statistic_point import StatisticPoint
from nncf.common.tensor_statistics.statistic_point import StatisticPointsContainer
from nncf.common.tensor_statistics.statistics import TensorStatistic
from nncf.common.utils.backend import BackendType
from nncf.common.utils.backend import get_backend
from nncf.quantization.algorithms.algorithm import Algorithm
from nncf.scopes import IgnoredScope
from nncf.scopes import get_ignored_node_names_from_ignored_scope
from nncf.tensor import Tensor
from nncf.tensor import TensorDataType
from nncf.tensor import functions as fns

TModel = TypeVar("TModel")

DEFAULT_LAM_REL = 1e-2
# Relative eigenvalue cut-off of the lam_rel = 0 case (the minimum-norm projection W P_row(X)).
RCOND = 1e-10


@dataclass
class GramTensorStatistic(TensorStatistic):
    """Gram matrix ``sum x x^T`` of a layer's input rows (float64) and the number of rows summed."""

    GRAM_STAT: ClassVar[str] = "gram"
    NUM_ROWS_STAT: ClassVar[str] = "num_rows"

    gram: Tensor
    num_rows: Tensor

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, GramTensorStatistic):
            return False
        return fns.allclose(self.num_rows, other.num_rows) and fns.allclose(self.gram, other.gram)


class GramReducer(TensorReducerBase):
    """Reduces an activation to ``[x^T x, number of rows]`` over its rows along ``channel_axis`` (float64)."""

    def __init__(self, channel_axis: int = -1):
        super().__init__(axes=(channel_axis,))
        self._channel_axis = channel_axis

    def _rows(self, x: Tensor) -> Tensor:
        x = fns.moveaxis(x, self._channel_axis, -1)
        return fns.reshape(x, (-1, x.shape[-1]))

    def _reduce_out_of_place(self, x: list[Tensor]) -> list[Tensor]:
        rows = fns.astype(self._rows(x[0]), TensorDataType.float64)
        num_rows = fns.tensor([rows.shape[0]], backend=rows.backend, dtype=TensorDataType.float64, device=rows.device)
        return [fns.matmul(fns.transpose(rows), rows), num_rows]


class SumAggregator(AggregatorBase):
    """Running sum of the reduced tensors."""

    def __init__(self, num_samples: int | None = None):
        super().__init__(num_samples=num_samples)
        self._sum: Tensor | None = None

    def _register_reduced_input_impl(self, x: Tensor) -> None:
        self._sum = x if self._sum is None else self._sum + x

    def _aggregate_impl(self) -> Tensor | None:
        return self._sum

    def reset(self) -> None:
        super().reset()
        self._sum = None


def vrc_solve(weight: Tensor, gram: Tensor, lam_rel: float) -> tuple[Tensor, float]:
    """
    Computes ``W' = W G (G + lam I)^-1`` for a 2-D ``weight`` ``(out, in)`` and its input Gram matrix (float64).

    ``lam > 0`` uses a Cholesky factorization of ``G + lam I`` (positive definite even for a rank-deficient ``G``);
    ``lam = 0`` (or a ``lam`` too small to regularise ``G`` numerically) the eigen form
    ``W U diag(s / (s + lam)) U^T``, whose ``lam = 0`` limit is the minimum-norm solution.

    :param weight: Weight matrix ``(out, in)``.
    :param gram: Gram matrix ``(in, in)`` of the layer's input rows.
    :param lam_rel: Ridge strength relative to the mean eigenvalue of ``gram``.
    :return: The updated weight (float64) and the absolute ridge strength ``lam``.
    """
    d = weight.shape[1]
    gram = (gram + fns.transpose(gram)) / 2
    lam = lam_rel * float(fns.sum(fns.diag(gram)).item()) / d
    w = fns.astype(weight, TensorDataType.float64)
    if lam > 0:
        eye = fns.eye(d, backend=gram.backend, dtype=TensorDataType.float64, device=gram.device)
        try:
            inverse = fns.linalg.cholesky_inverse(fns.linalg.cholesky(gram + lam * eye))
        except Exception:  # noqa: BLE001  (each backend raises its own linear-algebra error type)
            inverse = None
        if inverse is not None:
            return w - lam * fns.matmul(w, inverse), lam
    u, s, _ = fns.linalg.svd(gram, full_matrices=False)  # G is symmetric positive semi-definite: G = U diag(s) U^T
    shrink = s / (s + lam) if lam > 0 else fns.astype(s > RCOND * fns.max(s), TensorDataType.float64)
    return fns.matmul(fns.matmul(w, u) * shrink, fns.transpose(u)), lam


class VarianceReducedCalibration(Algorithm):
    """
    Post-training Variance-Reduced Calibration of linear layers (Q-SAM2, arXiv 2506.09782).

    Shrinks the Frobenius norm (and so the variance and outliers) of the weights of linear layers while keeping
    their outputs on the calibration data, so that the weights quantize with less error.
    """

    def __init__(
        self,
        subset_size: int | None = None,
        lam_rel: float = DEFAULT_LAM_REL,
        ignored_scope: IgnoredScope | None = None,
    ):
        """
        :param subset_size: Number of calibration samples to collect statistics on; None: the whole dataset.
        :param lam_rel: Ridge strength relative to the mean eigenvalue of the Gram matrix (``lam_rel >= 0``).
        :param ignored_scope: Layers to leave unchanged (a weight shared with an ignored call is left unchanged).
        """
        super().__init__()
        if isinstance(lam_rel, bool) or not isinstance(lam_rel, (int, float)) or not math.isfinite(lam_rel):
            msg = f"lam_rel must be a finite number >= 0, got {lam_rel!r}"
            raise nncf.ValidationError(msg)
        if lam_rel < 0:
            msg = f"lam_rel must be a finite number >= 0, got {lam_rel!r}"
            raise nncf.ValidationError(msg)
        if subset_size is not None and (isinstance(subset_size, bool) or not isinstance(subset_size, int)):
            msg = f"subset_size must be a positive int or None, got {subset_size!r}"
            raise nncf.ValidationError(msg)
        if subset_size is not None and subset_size < 1:
            msg = f"subset_size must be a positive int or None, got {subset_size!r}"
            raise nncf.ValidationError(msg)
        self._subset_size = subset_size
        self._lam_rel = float(lam_rel)
        self._ignored_scope = IgnoredScope() if ignored_scope is None else ignored_scope
        self._backend_entity = None
        self._algorithm_key = f"VRC_{hash(self)}"

    @property
    def available_backends(self) -> list[BackendType]:
        return [BackendType.TORCH]

    def _set_backend_entity(self, model: TModel) -> None:
        """
        Creates a helper class with a backend-specific logic of the algorithm.

        :param model: Backend-specific input model.
        """
        model_backend = get_backend(model)
        if model_backend == BackendType.TORCH:
            from qsam2_ext.integrations.nncf.vrc.torch_backend import PTVRCAlgoBackend

            self._backend_entity = PTVRCAlgoBackend()
        else:
            msg = f"Variance-Reduced Calibration does not support the {model_backend.value} backend."
            raise nncf.UnsupportedBackendError(msg)

    def _get_layers(self, model: TModel, graph: NNCFGraph) -> dict[str, list[NNCFNode]]:
        """
        Returns the layers to calibrate: weight name -> every node that calls the layer with that weight.

        :param model: Backend-specific model.
        :param graph: Model graph.
        :return: Calibrated weights by name, with their calls.
        """
        ignored = get_ignored_node_names_from_ignored_scope(
            self._ignored_scope, graph, strict=self._ignored_scope.validate
        )
        calls = defaultdict(list)
        for node in graph.get_nodes_by_metatypes(self._backend_entity.layer_metatypes):
            if self._backend_entity.is_linear_layer(node, graph):
                calls[self._backend_entity.get_weight_name(node, graph)].append(node)
        layers = {}
        for weight_name, nodes in calls.items():
            if any(node.node_name in ignored for node in nodes):
                if len(nodes) > 1:
                    nncf_logger.debug(f"VRC: {weight_name} is left unchanged: one of its calls is ignored")
                continue
            if self._backend_entity.count_weight_consumers(nodes[0], graph) != len(nodes):
                nncf_logger.debug(f"VRC: {weight_name} is left unchanged: it is also used by other operations")
                continue
            if self._is_target(model, graph, weight_name, nodes):
                layers[weight_name] = nodes
        return layers

    def _is_target(self, model: TModel, graph: NNCFGraph, weight_name: str, nodes: list[NNCFNode]) -> bool:
        """
        Further selection of the layers to calibrate (all by default), for algorithms built on this one.
        """
        return True

    def _create_reducer(self, model: TModel, graph: NNCFGraph, node: NNCFNode) -> TensorReducerBase:
        """
        Returns the reducer of ``node``'s input activation.
        """
        return GramReducer(self._backend_entity.get_activation_channel_axis(node))

    def _create_tensor_collector(self, model: TModel, graph: NNCFGraph, node: NNCFNode) -> TensorCollector:
        collector = TensorCollector(GramTensorStatistic)
        reducer = self._create_reducer(model, graph, node)
        collector.register_statistic_branch(GramTensorStatistic.GRAM_STAT, reducer, SumAggregator(self._subset_size), 0)
        collector.register_statistic_branch(
            GramTensorStatistic.NUM_ROWS_STAT, reducer, SumAggregator(self._subset_size), 1
        )
        return collector

    def get_statistic_points(self, model: TModel, graph: NNCFGraph) -> StatisticPointsContainer:
        self._set_backend_entity(model)
        container = StatisticPointsContainer()
        for nodes in self._get_layers(model, graph).values():
            for node in nodes:
                target_point = self._backend_entity.target_point(
                    node.node_name, self._backend_entity.get_activation_port_id(node)
                )
                collector = self._create_tensor_collector(model, graph, node)
                container.add_statistic_point(StatisticPoint(target_point, collector, self._algorithm_key))
        return container

    def _get_statistics(self, statistic_points: StatisticPointsContainer, node: NNCFNode) -> GramTensorStatistic | None:
        port_id = self._backend_entity.get_activation_port_id(node)

        def filter_fn(point: StatisticPoint) -> bool:
            return (
                self._algorithm_key in point.algorithm_to_tensor_collectors
                and point.target_point.input_port_id == port_id
            )

        found = None
        if node.node_name in statistic_points:
            for collector in statistic_points.get_algo_statistics_for_node(
                node.node_name, filter_fn, self._algorithm_key
            ):
                found = collector.get_statistics()
        return found

    def _check_statistics(self, weight_name: str, gram: Tensor | None, num_rows: float) -> None:
        if gram is None or num_rows <= 0:
            msg = f"VRC: layer {weight_name} saw no calibration data"
            raise nncf.ValidationError(msg)
        if not math.isfinite(fns.max(fns.abs(gram)).item()):
            msg = f"VRC: layer {weight_name} saw non-finite calibration activations (NaN or Inf)"
            raise nncf.ValidationError(msg)
        if not fns.sum(fns.diag(gram)).item() > 0:
            msg = f"VRC: layer {weight_name} saw only all-zero calibration inputs"
            raise nncf.ValidationError(msg)

    def apply(
        self,
        model: TModel,
        graph: NNCFGraph,
        statistic_points: StatisticPointsContainer | None = None,
        dataset: Dataset | None = None,
    ) -> TModel:
        self._set_backend_entity(model)
        if statistic_points is None:
            msg = "VRC needs the statistics declared by get_statistic_points"
            raise nncf.ValidationError(msg)
        updates = []
        for weight_name, nodes in self._get_layers(model, graph).items():
            gram, num_rows = None, 0.0
            for node in nodes:
                statistic = self._get_statistics(statistic_points, node)
                if statistic is None or statistic.gram is None:
                    continue
                gram = statistic.gram if gram is None else gram + statistic.gram
                num_rows += float(statistic.num_rows.item())
            self._check_statistics(weight_name, gram, num_rows)
            weight = self._backend_entity.get_weight_value(nodes[0], model, graph)
            matrix = fns.reshape(weight, (weight.shape[0], -1))
            new_matrix, lam = vrc_solve(matrix, gram, self._lam_rel)
            if not math.isfinite(fns.max(fns.abs(new_matrix)).item()):
                msg = f"VRC: the update of layer {weight_name} is not finite"
                raise nncf.ValidationError(msg)
            new_weight = fns.reshape(fns.astype(new_matrix, weight.dtype), weight.shape)
            updates.append((weight_name, nodes[0], matrix, new_matrix, gram, num_rows, lam, new_weight))

        transformation_layout = TransformationLayout()
        for weight_name, node, matrix, new_matrix, gram, num_rows, lam, new_weight in updates:
            self._on_update(weight_name, matrix, new_matrix, gram, num_rows, lam)
            transformation_layout.register(self._backend_entity.weight_update_command(node, graph, new_weight.data))
        model_transformer = ModelTransformerFactory.create(model)
        return model_transformer.transform(transformation_layout)

    def _on_update(
        self, weight_name: str, weight: Tensor, new_weight: Tensor, gram: Tensor, num_rows: float, lam: float
    ) -> None:
        """
        Called for every weight about to be updated, once all updates are computed (to report on them).
        """
        nncf_logger.debug(f"VRC: {weight_name} updated from {int(num_rows)} rows, lam={lam:.3g}")
