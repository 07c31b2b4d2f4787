"""The backend-specific part of Variance-Reduced Calibration (see ``algorithm.py``)."""

from __future__ import annotations

from abc import ABC
from abc import abstractmethod
from typing import TypeVar

from nncf.common.graph import NNCFGraph
from nncf.common.graph import NNCFNode
from nncf.common.graph.operator_metatypes import OperatorMetatype
from nncf.common.graph.transformations.commands import TargetPoint
from nncf.common.graph.transformations.commands import TransformationCommand
from nncf.tensor import Tensor

TModel = TypeVar("TModel")


class VRCAlgoBackend(ABC):
    @property
    @abstractmethod
    def layer_metatypes(self) -> list[OperatorMetatype]:
        """
        Metatypes of the operations that may be linear layers with a constant weight.
        """

    @staticmethod
    @abstractmethod
    def is_linear_layer(node: NNCFNode, graph: NNCFGraph) -> bool:
        """
        Whether ``node`` computes ``x W^T (+ b)`` on its activation rows with a constant weight ``W``
        (a fully connected layer, or a 1x1 convolution with unit stride, no padding and one group).

        :param node: Node of one of ``layer_metatypes``.
        :param graph: Model graph.
        """

    @staticmethod
    @abstractmethod
    def get_weight_name(node: NNCFNode, graph: NNCFGraph) -> str:
        """
        Name of the constant weight of ``node`` (the same for every call of a shared layer).
        """

    @staticmethod
    @abstractmethod
    def count_weight_consumers(node: NNCFNode, graph: NNCFGraph) -> int:
        """
        Number of operations that consume the weight of ``node``.
        """

    @staticmethod
    @abstractmethod
    def get_activation_port_id(node: NNCFNode) -> int:
        """
        Input port of the activation of ``node``.
        """

    @staticmethod
    @abstractmethod
    def get_activation_channel_axis(node: NNCFNode) -> int:
        """
        Channel (input feature) axis of the activation of ``node``.
        """

    @staticmethod
    @abstractmethod
    def target_point(target_node_name: str, port_id: int) -> TargetPoint:
        """
        Backend-specific target point before the input ``port_id`` of the node.
        """

    @staticmethod
    @abstractmethod
    def get_weight_value(node: NNCFNode, model: TModel, graph: NNCFGraph) -> Tensor:
        """
        The weight of ``node`` in ``model``, output channels first.
        """

    @staticmethod
    @abstractmethod
    def weight_update_command(node: NNCFNode, graph: NNCFGraph, weight_value: Tensor) -> TransformationCommand:
        """
        Command that sets the weight of ``node`` to ``weight_value`` (shaped like ``get_weight_value``).
        """
