"""Bit packing of signed b-bit codes into bytes, along the last dimension (each row packs on its own).

Codes are stored unsigned (``u = q + 2**(b-1)``), little-endian within each byte group:

* 2-bit: 4 codes per byte, code ``i`` in bits ``2i..2i+1``;
* 4-bit: 2 codes per byte, code 0 in the low nibble;
* 3-bit: 8 codes per 3 bytes: the 24-bit integer ``sum(u_i << 3i)`` written as 3 little-endian bytes, so code
  ``i`` occupies bits ``3i..3i+2`` of the group and codes 2 and 5 straddle byte boundaries;
* 8-bit: one code per byte.

A row whose length is not a multiple of the group (4, 2, 8 or 1 codes) is zero-padded; ``unpack_codes`` takes the
original length and drops the padding, so the round trip is exact.
"""

from __future__ import annotations

import torch

from .grid import check_bits

# codes per packing group and bytes per group
_LAYOUT = {2: (4, 1), 3: (8, 3), 4: (2, 1), 8: (1, 1)}


def packing_group(bits: int) -> tuple[int, int]:
    """``(codes, bytes)`` of one packing group: a row can be cut between groups without repacking."""
    return _LAYOUT[check_bits(bits)]


def packed_length(length: int, bits: int) -> int:
    codes, nbytes = _LAYOUT[check_bits(bits)]
    return -(-length // codes) * nbytes


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed codes (int8, in ``[-2**(b-1), 2**(b-1) - 1]``) into uint8, ``(..., K) -> (..., packed_length)``."""
    per, nbytes = _LAYOUT[check_bits(bits)]
    if codes.dtype != torch.int8:
        raise TypeError(f"codes must be int8, got {codes.dtype}")
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise ValueError(f"codes outside the signed {bits}-bit range [{lo}, {hi}]")
    u = (codes.to(torch.int32) + 2 ** (bits - 1))
    k = u.shape[-1]
    pad = -k % per
    if pad:
        u = torch.nn.functional.pad(u, (0, pad))
    u = u.reshape(*u.shape[:-1], -1, per)
    shifts = torch.arange(per, dtype=torch.int32, device=u.device) * bits
    word = (u << shifts).sum(-1)  # disjoint bit fields: the sum is a bitwise or
    out = torch.stack([(word >> (8 * b)) & 0xFF for b in range(nbytes)], dim=-1)
    return out.reshape(*out.shape[:-2], -1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: uint8 ``(..., packed_length)`` -> signed int8 codes ``(..., length)``."""
    per, nbytes = _LAYOUT[check_bits(bits)]
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    if packed.shape[-1] != packed_length(length, bits):
        raise ValueError(f"{packed.shape[-1]} packed bytes do not hold {length} {bits}-bit codes")
    if bits == 8:  # one code per byte, stored offset by 128: flipping the top bit gives two's complement
        return (packed ^ 0x80).view(torch.int8)
    b = packed.to(torch.int32).reshape(*packed.shape[:-1], -1, nbytes)
    word = sum(b[..., i] << (8 * i) for i in range(nbytes))
    shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * bits
    u = (word.unsqueeze(-1) >> shifts) & (2**bits - 1)
    u = u.reshape(*u.shape[:-2], -1)[..., :length]
    return (u - 2 ** (bits - 1)).to(torch.int8)
