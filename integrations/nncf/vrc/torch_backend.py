"""PyTorch backend of Variance-Reduced Calibration (NNCF's function-hook tracing, ``GraphModelWrapper`` models)."""

from __future__ import annotations

import torch
from torch import nn

import nncf
import nncf.torch.graph.operator_metatypes as om
from nncf.common.graph import NNCFGraph
from nncf.common.graph import NNCFNode
from nncf.common.graph.operator_metatypes import OperatorMetatype
from nncf.common.graph.transformations.commands import TargetType
from qsam2_ext.integrations.nncf.vrc.backend import VRCAlgoBackend
from nncf.tensor import Tensor
from nncf.torch.function_hook.commands import PT2ConstUpdateCommand
from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import GraphModelWrapper
from nncf.torch.graph.transformations.commands import PTTargetPoint
from nncf.torch.model_graph_manager import get_const_data
from nncf.torch.model_graph_manager import get_const_node


class PTVRCAlgoBackend(VRCAlgoBackend):
    @property
    def layer_metatypes(self) -> list[OperatorMetatype]:
        return [om.PTLinearMetatype, om.PTConv2dMetatype]

    @staticmethod
    def is_linear_layer(node: NNCFNode, graph: NNCFGraph) -> bool:
        port_id = node.metatype.weight_port_ids[0]
        try:
            weight_node = get_const_node(node, port_id, graph)
        except nncf.InternalError:  # the weight port is fed by a computed tensor
            return False
        if weight_node is None:
            return False
        if node.metatype == om.PTLinearMetatype:
            return True
        weight_shape = weight_node.layer_attributes.shape
        args, kwargs = node.layer_attributes.op_args, node.layer_attributes.op_kwargs

        def arg(index: int, name: str, default):
            value = args[index] if len(args) > index else kwargs.get(name, default)
            return tuple(value) if isinstance(value, (list, tuple)) else value

        def pair(value) -> tuple:
            return value if isinstance(value, tuple) else (value, value)

        return (
            tuple(weight_shape[2:]) == (1, 1)
            and pair(arg(3, "stride", 1)) == (1, 1)
            and arg(4, "padding", 0) in (0, (0, 0), "valid")
            and pair(arg(5, "dilation", 1)) == (1, 1)
            and arg(6, "groups", 1) == 1
        )

    @staticmethod
    def get_weight_name(node: NNCFNode, graph: NNCFGraph) -> str:
        return get_const_node(node, node.metatype.weight_port_ids[0], graph).layer_attributes.name

    @staticmethod
    def count_weight_consumers(node: NNCFNode, graph: NNCFGraph) -> int:
        weight_node = get_const_node(node, node.metatype.weight_port_ids[0], graph)
        return len(graph.get_next_nodes(weight_node))

    @staticmethod
    def get_activation_port_id(node: NNCFNode) -> int:
        return 0

    @staticmethod
    def get_activation_channel_axis(node: NNCFNode) -> int:
        return -1 if node.metatype == om.PTLinearMetatype else 1

    @staticmethod
    def target_point(target_node_name: str, port_id: int) -> PTTargetPoint:
        return PTTargetPoint(TargetType.OPERATOR_PRE_HOOK, target_node_name, input_port_id=port_id)

    @staticmethod
    def get_weight_value(node: NNCFNode, model: nn.Module, graph: NNCFGraph) -> Tensor:
        if isinstance(model, GraphModelWrapper):
            model = model.model
        weight_node = get_const_node(node, node.metatype.weight_port_ids[0], graph)
        return Tensor(get_const_data(weight_node, model))

    @staticmethod
    def weight_update_command(node: NNCFNode, graph: NNCFGraph, weight_value: torch.Tensor) -> PT2ConstUpdateCommand:
        weight_node = get_const_node(node, node.metatype.weight_port_ids[0], graph)
        return PT2ConstUpdateCommand(weight_node, weight_value)
