import numpy as np
import pytest
import torch

from qsam2_ext.core import pack_codes, packed_length, unpack_codes


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("length", [1, 7, 8, 96, 113])
def test_round_trip_is_exact(bits, length):
    codes = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (5, 3, length), dtype=torch.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 3, packed_length(length, bits))
    assert torch.equal(unpack_codes(packed, bits, length), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_storage_is_bits_over_8_bytes_per_code(bits):
    assert packed_length(1024, bits) == 1024 * bits // 8


def test_two_and_four_bit_layout():
    codes = torch.tensor([[-2, -1, 0, 1]], dtype=torch.int8)  # unsigned 0, 1, 2, 3
    assert pack_codes(codes, 2).tolist() == [[0 | 1 << 2 | 2 << 4 | 3 << 6]]
    codes = torch.tensor([[-8, 7]], dtype=torch.int8)  # unsigned 0, 15
    assert pack_codes(codes, 4).tolist() == [[0xF0]]


def test_three_bit_layout_is_little_endian_24_bit_groups():
    u = np.array([1, 2, 3, 4, 5, 6, 7, 0])
    word = sum(int(c) << (3 * i) for i, c in enumerate(u))
    expected = [word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF]
    codes = torch.from_numpy(u[None] - 4).to(torch.int8)
    assert pack_codes(codes, 3).tolist() == [expected]


def test_out_of_range_codes_rejected():
    with pytest.raises(ValueError, match="range"):
        pack_codes(torch.tensor([2], dtype=torch.int8), 2)
    with pytest.raises(TypeError):
        pack_codes(torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="packed bytes"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 2, 20)
