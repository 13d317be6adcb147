"""The format core: float element rounding against torch's own float8 casts, names and spec identity."""
import pytest
import torch

from qrobust.errors import ConfigError, QrobustError
from qrobust.quant.formats.elements import ELEMENTS, round_float
from qrobust.quant.formats.presets import FORMATS, parse_format
from qrobust.quant.registry import QuantSpec


@pytest.mark.parametrize("name,dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
def test_round_float_equals_torch_float8_cast(name, dtype):
    torch.manual_seed(0)
    x = torch.randn(200_000) * torch.exp(torch.randn(200_000) * 5)  # normals, subnormals, beyond max
    e = ELEMENTS[name]
    ref = torch.clamp(x, -e.max, e.max).to(dtype).float()
    assert torch.equal(round_float(x, e), ref)


def test_e2m1_values_and_ties_to_even():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.3, 0.1])
    assert round_float(x, ELEMENTS["e2m1"]).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.5, 0.0]


def test_integer_presets_are_the_plain_variant():
    assert QuantSpec("rtn", format="int4-g128") == QuantSpec("rtn", 4, 128)
    assert QuantSpec("gptq", format="int3-channel").to_dict() == QuantSpec("gptq", 3, -1).to_dict()
    assert "format" not in QuantSpec("rtn", 4, 128).to_dict()


def test_float_formats_set_bits_groups_and_label():
    s = QuantSpec("gptq", format="nvfp4")
    assert (s.bits, s.group_size, s.label, s.to_dict()["format"]) == (4, 16, "gptq-nvfp4", "nvfp4")
    w = QuantSpec("rtn", format="w8a8-int8")
    assert (w.bits, w.group_size, w.act, w.label) == (8, -1, "int8-token", "rtn-w8ch+a-int8-token")


def test_general_spelling_and_refusals():
    f = parse_format("fp4-e2m1-g32-e8m0")
    assert (f.element, f.block_size, f.scale) == (FORMATS["mxfp4"].element, 32, "e8m0")
    with pytest.raises(ConfigError, match="unknown number format 'fp5'"):
        parse_format("fp5")
    with pytest.raises(ConfigError, match="activation"):
        QuantSpec("rtn", format="int8-tensor")
    with pytest.raises(QrobustError, match="does not divide"):
        from qrobust.quant.formats.grid import fake_quantize_format
        fake_quantize_format(torch.randn(4, 48), parse_format("mxfp4"))


def test_stochastic_integer_format_is_refused_not_dropped():
    with pytest.raises(ConfigError, match="stochastic rounding"):
        QuantSpec("rtn", format="int4-g128-sr")
