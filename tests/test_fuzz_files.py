"""Fuzzing what the project reads from files (seeded, so CI repeats it): any metadata, any mutation of a recipe or of a
quantized file ends in success or in the project's own error, in bounded time and memory; never in another
exception, a hang or a model built from something outside the allow-list."""

import json
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import qsam2_ext
from qsam2_ext import load_quantized, read_metadata  # imported here: torchao's import is not an input's cost
from qsam2_ext.errors import QSAM2Error
from qsam2_ext.recipes import load_recipe, shipped_recipe_path
from qsam2_ext.sam2.artifact import artifact_info
from qsam2_ext.sam2.models import PACKAGED_CONFIGS

FUZZ = settings(max_examples=60, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MEMORY_BOUND = 64 * 2**20  # Python allocations while one input is read

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)
field_values = st.sampled_from(["sam2.1_hiera_t", "qsam2_mini", "configs/sam2.1/sam2.1_hiera_l.yaml", "../x.yaml",
                                "${oc.env:HOME}", "sam2.1_hiera_t\n", 256, 255, -32, 2**40, None]) | json_values
metadata = st.dictionaries(st.sampled_from(["model", "image_size", "recipe", "qat_steps", "overrides", "_target_"]),
                           field_values, max_size=5) | json_values


def _bounded(read):
    tracemalloc.start()
    try:
        return read()
    except QSAM2Error:
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB to read one input"


@FUZZ
@given(meta=metadata)
def test_any_metadata_is_validated_or_refused(meta):
    info = _bounded(lambda: artifact_info(meta, "fuzz.safetensors"))
    if info is not None:
        assert info.model in (None, *PACKAGED_CONFIGS) and (info.image_size is None or info.image_size % 32 == 0)


@FUZZ
@given(meta=metadata)
def test_metadata_text_in_a_file_is_read_as_data(tmp_path_factory, meta):
    path = tmp_path_factory.mktemp("meta") / "m.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "qsam2_ext": json.dumps(meta)}, path)
    read = _bounded(lambda: read_metadata(path))
    assert read is None or read == meta or not isinstance(meta, dict)


_YAML_NOISE = list("&*!|>{}[]:-,#'\"%@`?\n ") + ["<<: ", "*a", "&a ", "!!python/object:os.system", "re:(", "${x}"]


@FUZZ
@given(data=st.data())
def test_mutated_recipes_load_or_fail_with_a_recipe_error(tmp_path_factory, data):
    text = open(shipped_recipe_path(data.draw(st.sampled_from(["qsam2_mini_w4a8", "sam2.1_hiera_t_w2a4"])))).read()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        text = text[:at] + data.draw(st.sampled_from(_YAML_NOISE)) * data.draw(st.integers(1, 3)) + text[at + cut:]
    path = tmp_path_factory.mktemp("recipe") / "fuzzed.yaml"
    path.write_text(text)
    _bounded(lambda: load_recipe(str(path)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from torchao.quantization import quantize_

    net = nn.Sequential(nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 4))
    quantize_(net, qsam2_ext.qsam2_config(bits=2, act_bits=8))
    folder = tmp_path_factory.mktemp("saved")
    return {suffix: qsam2_ext.save_quantized(net, folder / f"net{suffix}", metadata={"model": "qsam2_mini"})
            .read_bytes() for suffix in (".safetensors", ".pt")}


def _fresh():
    return nn.Sequential(nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 4))


@FUZZ
@given(data=st.data())
def test_mutated_quantized_files_load_or_fail_with_a_file_error(tmp_path_factory, saved, data):
    suffix = data.draw(st.sampled_from(sorted(saved)))
    content = bytearray(saved[suffix])
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
        at = data.draw(st.integers(0, len(content) - 1))
        if kind == "flip":
            content[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del content[at:]
            if len(content) < 9:
                break
        elif kind == "insert":
            content[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:  # the first bytes: the safetensors header length, the zip signature
            content[data.draw(st.integers(0, 8))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("mutated") / f"net{suffix}"
    path.write_bytes(bytes(content))
    _bounded(lambda: read_metadata(path))
    _bounded(lambda: load_quantized(_fresh(), path))
