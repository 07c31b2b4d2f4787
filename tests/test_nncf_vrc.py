"""Torch instance of the VarianceReducedCalibration template, and its torch-specific behaviour."""

import copy

import numpy as np
import pytest
import torch

nncf = pytest.importorskip("nncf")
from nncf.quantization.algorithms.pipeline import Pipeline  # noqa: E402
from qsam2_ext.integrations.nncf.vrc.algorithm import VarianceReducedCalibration  # noqa: E402
from nncf.torch.function_hook import get_hook_storage  # noqa: E402
from nncf.torch.function_hook import wrap_model  # noqa: E402
from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import GraphModelWrapper  # noqa: E402
from test_nncf_vrc_template import LinearReluLinearModel  # noqa: E402
from test_nncf_vrc_template import TemplateTestVRC  # noqa: E402
from test_nncf_vrc_template import get_data  # noqa: E402


class TestTorchVRC(TemplateTestVRC):
    @staticmethod
    def backend_specific_model(model, example):
        return GraphModelWrapper(wrap_model(model), torch.from_numpy(example))

    @staticmethod
    def get_graph(model):
        return model.get_graph()

    @staticmethod
    def get_dataset(data):
        return nncf.Dataset([torch.from_numpy(x) for x in data])

    @staticmethod
    def get_weights(model):
        return {
            name: module.weight.detach().numpy().copy()
            for name, module in model.model.named_children()
            if isinstance(module, torch.nn.Linear)
        }

    @staticmethod
    def get_bias(model, name):
        return getattr(model.model, name).bias.detach().numpy()

    @staticmethod
    def copy_model(model):
        return GraphModelWrapper(copy.deepcopy(model.model), model.example_input)

    @staticmethod
    def shared_layer_call_names():
        return "shared/linear/0", "shared/linear/1"


def _wrapped():
    data = get_data()
    return TestTorchVRC.backend_specific_model(LinearReluLinearModel(), data[0]), data


def test_conv_1x1_is_calibrated_and_other_convs_are_not():
    class Convs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pointwise = torch.nn.Conv2d(4, 6, 1)
            self.spatial = torch.nn.Conv2d(6, 6, 3, padding=1)
            self.strided = torch.nn.Conv2d(6, 6, 1, stride=2)

        def forward(self, x):
            return self.strided(self.spatial(self.pointwise(x)))

    torch.manual_seed(0)
    model = Convs()
    data = [torch.randn(2, 4, 6, 6) for _ in range(2)]
    before = copy.deepcopy(model.state_dict())
    wrapper = GraphModelWrapper(wrap_model(model), data[0])
    Pipeline([[VarianceReducedCalibration()]]).run(wrapper, nncf.Dataset(data))
    rows = torch.cat([x.movedim(1, -1).reshape(-1, 4) for x in data]).double()
    gram = rows.T @ rows
    lam = 1e-2 * torch.trace(gram) / 4
    w = before["pointwise.weight"].reshape(6, 4).double()
    expected = torch.linalg.solve(gram + lam * torch.eye(4, dtype=torch.float64), gram @ w.T).T
    torch.testing.assert_close(model.pointwise.weight.reshape(6, 4).double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.spatial.weight, before["spatial.weight"])
    assert torch.equal(model.strided.weight, before["strided.weight"])


def test_get_statistic_points_changes_nothing_in_the_model_or_the_process():
    model, _ = _wrapped()
    global_hooks = dict(torch.nn.modules.module._global_forward_pre_hooks)
    VarianceReducedCalibration().get_statistic_points(model, model.get_graph())
    assert get_hook_storage(model.model).is_empty()
    assert dict(torch.nn.modules.module._global_forward_pre_hooks) == global_hooks


def test_statistics_hooks_are_removed_after_collection():
    model, data = _wrapped()
    TestTorchVRC()._run(VarianceReducedCalibration(), model, data)
    assert get_hook_storage(model.model).is_empty()


def test_openvino_model_is_an_unsupported_backend():
    ov = pytest.importorskip("openvino")
    data = get_data()
    ov_model = ov.convert_model(LinearReluLinearModel(), example_input=torch.from_numpy(data[0]))
    graph = None  # the backend is checked before the graph is read
    algorithm = VarianceReducedCalibration()
    assert nncf.common.utils.backend.BackendType.OPENVINO not in algorithm.available_backends
    with pytest.raises(nncf.UnsupportedBackendError, match="OpenVINO"):
        algorithm.get_statistic_points(ov_model, graph)
    with pytest.raises(nncf.UnsupportedBackendError, match="OpenVINO"):
        algorithm.apply(ov_model, graph, None)


def test_weights_keep_dtype_and_device():
    model, data = _wrapped()
    TestTorchVRC()._run(VarianceReducedCalibration(), model, data)
    for module in (model.model.linear_1, model.model.linear_2):
        assert module.weight.dtype == torch.float32 and isinstance(module.weight, torch.nn.Parameter)
    assert np.isfinite(module.weight.detach().numpy()).all()
