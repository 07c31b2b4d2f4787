"""``qsam2_ext.core.settings.LayerQuant``: the layer settings both adapters quantize with, checked once."""

import pytest

from qsam2_ext.core import QUANTIZERS, SUPPORTED_BITS, LayerQuant

BAD = [
    (dict(bits=5), "bits"), (dict(bits=True), "bits"), (dict(bits=2, act_bits=6), "act_bits"),
    (dict(method="adaround"), "unknown method"), (dict(group_size=0), "group_size"),
    (dict(group_size=-32), "group_size"), (dict(group_size=32.0), "group_size"),
    (dict(method="lsq", alpha_init=2.0), "alpha_init applies"), (dict(momentum=1.5), "momentum"),
    (dict(momentum=True), "momentum"), (dict(method="pact", momentum=0.5), "momentum applies"),
    (dict(act_alpha_init=2.0), "needs act_bits"), (dict(alpha_init=float("nan")), "alpha_init"),
    (dict(act_per_channel=1), "act_per_channel"),
]


@pytest.mark.parametrize("kwargs,match", BAD)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerQuant(**kwargs)


@pytest.mark.parametrize("kwargs,match", BAD)
def test_torchao_config_refuses_the_same_settings_with_the_same_message(kwargs, match):
    pytest.importorskip("torchao")
    from qsam2_ext import qsam2_config

    with pytest.raises(ValueError) as core:
        LayerQuant(**kwargs)
    with pytest.raises(ValueError) as torchao:
        qsam2_config(**kwargs)
    assert str(core.value) == str(torchao.value)


def test_every_method_and_width_is_accepted_and_options_split_by_quantizer():
    for method in QUANTIZERS:
        for bits in SUPPORTED_BITS:
            assert LayerQuant(method=method, bits=bits, act_bits=bits).bits == bits
    s = LayerQuant(bits=2, act_bits=4, alpha_init=2.5, act_alpha_init=3.0, momentum=0.9)
    assert s.weight_options() == {"alpha_init": 2.5}
    assert s.input_options() == {"alpha_init": 3.0, "momentum": 0.9}
    assert LayerQuant().weight_options() == {} and LayerQuant().input_options() == {}


def test_torchao_config_carries_its_settings():
    pytest.importorskip("torchao")
    from qsam2_ext import qsam2_config

    cfg = qsam2_config(bits=3, act_bits=8, group_size=64, momentum=0.5, act_per_channel=True)
    assert cfg.settings == LayerQuant(bits=3, act_bits=8, group_size=64, momentum=0.5, act_per_channel=True)


def test_the_nncf_adapter_imports_nothing_of_the_torchao_adapter():
    """Every import in the NNCF adapter's files, function-level (lazy) ones included: none reaches the torchao
    adapter, torchao or the package root (whose ``qsam2_config`` is the torchao adapter's)."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "integrations" / "nncf"
    files = sorted(folder.glob("*.py"))
    assert len(files) > 5
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not (name.startswith(("torchao", "qsam2_ext.integrations.torchao", "..torchao"))
                            or name == "qsam2_ext"), f"{path.name}:{node.lineno} imports {name}"
