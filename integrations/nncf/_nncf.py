"""Every NNCF import of the adapter, in one module: a version bump (``nncf>=3.4,<3.5``) touches this file only.

Public API (``nncf.*``, ``nncf.torch.*``) and the internals the adapter needs (``Algorithm``, statistics,
graph helpers, hook storage) are re-exported under stable local names. See ``shared/reference/nncf.md`` §6 for
which is which.
"""

from __future__ import annotations

try:
    import nncf
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "qsam2_ext.integrations.nncf needs NNCF 3.4: pip install 'qsam2_ext[nncf]' (nncf>=3.4,<3.5)"
    ) from e

if not nncf.__version__.startswith("3.4."):  # pragma: no cover - the pin guards this; a clear message if bypassed
    raise ImportError(f"qsam2_ext.integrations.nncf is written against NNCF 3.4.x, found {nncf.__version__}")

# public
from nncf import (  # noqa: E402,F401
    Dataset,
    IgnoredScope,
    InternalError,
    ModelType,
    TargetDevice,
    UnsupportedBackendError,
    ValidationError,
)
from nncf.parameters import StripFormat  # noqa: E402,F401
from nncf.torch import get_config, load_from_config  # noqa: E402,F401

# semi-public (exported by nncf.torch.function_hook)
from nncf.torch.function_hook import (  # noqa: E402,F401
    get_hook_storage,
    register_post_function_hook,
    register_pre_function_hook,
    wrap_model,
)
from nncf.torch.layer_utils import StatefulModuleInterface  # noqa: E402,F401

# internal
from nncf.common.graph.graph import NNCFGraph, NNCFNode  # noqa: E402,F401
from nncf.common.graph.transformations.commands import TargetType  # noqa: E402,F401
from nncf.common.tensor_statistics.collectors import AggregatorBase, TensorCollector, TensorReducerBase  # noqa: E402,F401
from nncf.common.tensor_statistics.statistic_point import StatisticPoint, StatisticPointsContainer  # noqa: E402,F401
from nncf.common.tensor_statistics.statistics import TensorStatistic  # noqa: E402,F401
from nncf.common.utils.backend import BackendType, get_backend  # noqa: E402,F401
from nncf.quantization.algorithms.algorithm import Algorithm  # noqa: E402,F401
from nncf.quantization.algorithms.pipeline import Pipeline, collect_statistics  # noqa: E402,F401
from nncf.quantization.algorithms.post_training.pipeline import create_ptq_pipeline  # noqa: E402,F401
from nncf.scopes import get_ignored_node_names_from_ignored_scope  # noqa: E402,F401
from nncf.tensor import Tensor  # noqa: E402,F401
from nncf.torch.function_hook.hook_executor_mode import disable_function_hook_mode  # noqa: E402,F401
from nncf.torch.function_hook.hook_storage import decode_hook_name  # noqa: E402,F401
from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import GraphModelWrapper  # noqa: E402,F401
from nncf.torch.graph import operator_metatypes as metatypes  # noqa: E402,F401
from nncf.torch.graph.operator_metatypes import QUANTIZE_NODE_TYPES  # noqa: E402,F401
from nncf.torch.graph.transformations.commands import PTTargetPoint  # noqa: E402,F401
from nncf.torch.model_graph_manager import get_const_node  # noqa: E402,F401
from nncf.torch.quantization.default_quantization import DEFAULT_PT_QUANT_TRAIT_TO_OP_DICT  # noqa: E402,F401
from nncf.torch.quantization.layers import BaseQuantizer, SymmetricQuantizer  # noqa: E402,F401
from nncf.torch.quantization.quantize_functions import pack_int4, unpack_int4  # noqa: E402,F401
from nncf.common.quantization.quantizer_propagation.structs import QuantizationTrait  # noqa: E402,F401

# ops whose output is their input rearranged: a quantizer before them quantizes what comes after them
AGNOSTIC_METATYPES = tuple(DEFAULT_PT_QUANT_TRAIT_TO_OP_DICT[QuantizationTrait.QUANTIZATION_AGNOSTIC])
LINEAR_METATYPES = (metatypes.PTLinearMetatype, metatypes.PTConv2dMetatype)


def unwrap(model):
    """The ``nn.Module`` of an NNCF ``GraphModelWrapper`` (what NNCF's torch algorithms receive), or ``model``."""
    return model.model if isinstance(model, GraphModelWrapper) else model
