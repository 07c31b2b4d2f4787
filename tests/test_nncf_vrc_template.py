"""Backend-independent tests of NNCF's VarianceReducedCalibration (the template of NNCF's cross-framework tests;
``test_nncf_vrc.py`` is its torch instance). References are closed forms in NumPy."""

from abc import abstractmethod

import numpy as np
import pytest
import torch

import nncf
from nncf.common.factory import StatisticsAggregatorFactory
from nncf.common.tensor_statistics.statistics import TensorStatistic
from qsam2_ext.integrations.nncf.vrc.algorithm import GramTensorStatistic
from qsam2_ext.integrations.nncf.vrc.algorithm import VarianceReducedCalibration

LAM_REL = 1e-2


class LinearReluLinearModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear_1 = torch.nn.Linear(8, 16)
        self.linear_2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.linear_2(torch.relu(self.linear_1(x)))


class SharedLinearModel(torch.nn.Module):
    """``shared`` is called twice: on the input, and on the output of ``linear``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(8, 8)
        self.shared = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.shared(x) + self.shared(torch.relu(self.linear(x)))


def get_data(num_samples=3, shape=(2, 5, 8), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(num_samples)]


def ref_vrc(weight: np.ndarray, rows: np.ndarray, lam_rel: float = LAM_REL) -> np.ndarray:
    gram = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
    gram = gram.T @ gram
    lam = lam_rel * np.trace(gram) / gram.shape[0]
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), gram @ weight.astype(np.float64).T).T


def relu(x):
    return np.maximum(x, 0)


class TemplateTestVRC:
    @staticmethod
    @abstractmethod
    def backend_specific_model(model: torch.nn.Module, example: np.ndarray):
        """Returns the backend-specific model of ``model`` (an NNCF-ready one)."""

    @staticmethod
    @abstractmethod
    def get_graph(model):
        """Returns the NNCFGraph of a backend-specific model."""

    @staticmethod
    @abstractmethod
    def get_dataset(data: list[np.ndarray]) -> nncf.Dataset:
        """Returns a backend-specific dataset of the arrays."""

    @staticmethod
    @abstractmethod
    def get_weights(model) -> dict[str, np.ndarray]:
        """Weights of the backend-specific model by name: ``{layer name: (out, in) array}``."""

    @staticmethod
    @abstractmethod
    def get_bias(model, name: str) -> np.ndarray:
        """Bias of the layer ``name``."""

    @staticmethod
    @abstractmethod
    def copy_model(model):
        """An independent copy of a backend-specific model."""

    @staticmethod
    @abstractmethod
    def shared_layer_call_names() -> tuple[str, str]:
        """Node names of the two calls of ``SharedLinearModel.shared``."""

    def _model(self, model_cls=LinearReluLinearModel, data=None):
        data = get_data() if data is None else data
        return self.backend_specific_model(model_cls(), data[0]), data

    def _collect(self, algorithm, model, data):
        graph = self.get_graph(model)
        aggregator = StatisticsAggregatorFactory.create(model, self.get_dataset(data))
        aggregator.register_statistic_points(algorithm.get_statistic_points(model, graph))
        aggregator.collect_statistics(model, graph)
        return aggregator

    def _run(self, algorithm, model, data):
        aggregator = self._collect(algorithm, model, data)
        return algorithm.apply(model, self.get_graph(model), aggregator.statistic_points)

    def test_matches_closed_form(self):
        model, data = self._model()
        before = self.get_weights(model)
        model = self._run(VarianceReducedCalibration(lam_rel=LAM_REL), model, data)
        after = self.get_weights(model)
        x = np.stack(data)
        hidden = relu(x @ before["linear_1"].T + self.get_bias(model, "linear_1"))
        np.testing.assert_allclose(after["linear_1"], ref_vrc(before["linear_1"], x), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(after["linear_2"], ref_vrc(before["linear_2"], hidden), rtol=1e-4, atol=1e-6)

    def test_statistics_are_tensor_statistics(self):
        model, data = self._model()
        algorithm = VarianceReducedCalibration()
        aggregator = self._collect(algorithm, model, data)
        collectors = [c for _, _, c in aggregator.statistic_points.get_tensor_collectors()]
        assert len(collectors) == 2
        for collector in collectors:
            statistic = collector.get_statistics()
            assert isinstance(statistic, GramTensorStatistic) and isinstance(statistic, TensorStatistic)
            assert statistic.num_rows.item() == 3 * 2 * 5

    def test_subset_size(self):
        model, data = self._model()
        model = self._run(VarianceReducedCalibration(subset_size=1), model, data)
        before = self.get_weights(self._model()[0])
        np.testing.assert_allclose(
            self.get_weights(model)["linear_1"], ref_vrc(before["linear_1"], data[0]), rtol=1e-4, atol=1e-6
        )

    def test_apply_acts_on_the_model_it_is_given(self):
        model, data = self._model()
        algorithm = VarianceReducedCalibration()
        aggregator = self._collect(algorithm, model, data)
        original = self.get_weights(model)
        copy = self.copy_model(model)
        result = algorithm.apply(copy, self.get_graph(copy), aggregator.statistic_points)
        for name, weight in self.get_weights(model).items():
            np.testing.assert_array_equal(weight, original[name])
        assert not np.allclose(self.get_weights(result)["linear_1"], original["linear_1"])

    def test_shared_layer_is_fitted_to_all_its_calls(self):
        model, data = self._model(SharedLinearModel)
        before = self.get_weights(model)
        model = self._run(VarianceReducedCalibration(), model, data)
        x = np.stack(data)
        hidden = relu(x @ before["linear"].T + self.get_bias(model, "linear"))
        rows = np.concatenate([x.reshape(-1, 8), hidden.reshape(-1, 8)])
        np.testing.assert_allclose(
            self.get_weights(model)["shared"], ref_vrc(before["shared"], rows), rtol=1e-4, atol=1e-6
        )

    @pytest.mark.parametrize("call", [0, 1])
    def test_shared_layer_with_an_ignored_call_is_left_unchanged(self, call):
        model, data = self._model(SharedLinearModel)
        before = self.get_weights(model)
        scope = nncf.IgnoredScope(names=[self.shared_layer_call_names()[call]])
        model = self._run(VarianceReducedCalibration(ignored_scope=scope), model, data)
        after = self.get_weights(model)
        np.testing.assert_array_equal(after["shared"], before["shared"])
        np.testing.assert_allclose(after["linear"], ref_vrc(before["linear"], np.stack(data)), rtol=1e-4, atol=1e-6)

    def test_ignored_scope_that_matches_nothing_raises(self):
        model, _ = self._model()
        algorithm = VarianceReducedCalibration(ignored_scope=nncf.IgnoredScope(names=["no_such_node"]))
        with pytest.raises(nncf.ValidationError, match="no_such_node"):
            algorithm.get_statistic_points(model, self.get_graph(model))
        algorithm = VarianceReducedCalibration(ignored_scope=nncf.IgnoredScope(names=["no_such_node"], validate=False))
        algorithm.get_statistic_points(model, self.get_graph(model))

    def test_missing_statistics_raise_and_change_nothing(self):
        model, data = self._model()
        before = self.get_weights(model)
        algorithm = VarianceReducedCalibration()
        algorithm.get_statistic_points(model, self.get_graph(model))
        from nncf.common.tensor_statistics.statistic_point import StatisticPointsContainer

        with pytest.raises(nncf.ValidationError, match="saw no calibration data"):
            algorithm.apply(model, self.get_graph(model), StatisticPointsContainer())
        for name, weight in self.get_weights(model).items():
            np.testing.assert_array_equal(weight, before[name])

    def test_non_finite_data_raises_in_apply_and_changes_nothing(self):
        data = get_data()
        data[1][0, 0, 0] = np.nan
        model, _ = self._model(data=data)
        before = self.get_weights(model)
        algorithm = VarianceReducedCalibration()
        aggregator = self._collect(algorithm, model, data)  # collection itself succeeds: reducers only collect
        with pytest.raises(nncf.ValidationError, match="non-finite"):
            algorithm.apply(model, self.get_graph(model), aggregator.statistic_points)
        for name, weight in self.get_weights(model).items():
            np.testing.assert_array_equal(weight, before[name])

    def test_empty_dataset_raises_validation_error(self):
        model, _ = self._model()
        with pytest.raises(nncf.ValidationError, match="empty"):
            self._collect(VarianceReducedCalibration(), model, [])

    def test_dump_and_load_statistics(self, tmp_path):
        model, data = self._model()
        expected = self.get_weights(self._run(VarianceReducedCalibration(), self.copy_model(model), data))
        aggregator = self._collect(VarianceReducedCalibration(), model, data)
        aggregator.dump_statistics(tmp_path / "statistics")

        algorithm = VarianceReducedCalibration()
        graph = self.get_graph(model)
        loader = StatisticsAggregatorFactory.create(model, self.get_dataset(data))
        loader.register_statistic_points(algorithm.get_statistic_points(model, graph))
        loader.load_statistics_from_dir(tmp_path / "statistics")
        model = algorithm.apply(model, graph, loader.statistic_points)
        for name, weight in self.get_weights(model).items():
            np.testing.assert_array_equal(weight, expected[name])

    @pytest.mark.parametrize("lam_rel", [-1.0, float("nan"), True])
    def test_invalid_lam_rel_raises(self, lam_rel):
        with pytest.raises(nncf.ValidationError, match="lam_rel"):
            VarianceReducedCalibration(lam_rel=lam_rel)

    def test_lam_rel_zero_keeps_full_rank_layers(self):
        model, data = self._model(data=get_data(num_samples=4, shape=(4, 6, 8)))
        before = self.get_weights(model)
        model = self._run(VarianceReducedCalibration(lam_rel=0.0), model, data)
        np.testing.assert_allclose(self.get_weights(model)["linear_1"], before["linear_1"], rtol=1e-4, atol=1e-5)
