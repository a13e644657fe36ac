# SPDX-License-Identifier: Apache-2.0
"""The one integer arithmetic of the KEP toolkit.

Everything that the accelerator (``kep_hw``) computes and everything that the golden model
(:mod:`kep_train.golden`) computes goes through the functions of this module, so that both
sides agree bit for bit. The rules are written out in ``docs/arithmetic.md``; this module is
their executable form. All functions work on integer tensors and compute in ``int64``.

Rules (one conv / linear output element):

1. Products ``int8 x int8`` (weights in [-128, 127], activations in [-128, 127]).
2. Accumulation ``acc = bias + sum(products)`` reduced modulo 2**32 into int32 (two's
   complement wrap, exactly what a 32-bit hardware accumulator does). Exported layers are
   checked so that no wrap occurs in practice.
3. Requantization by a per-output-channel fixed-point multiplier ``mult`` (0 <= mult < 2**16)
   and right shift ``shift`` (1 <= shift <= 47), with an optional residual term
   ``res * res_mult`` (res int8, 0 <= res_mult < 2**24) added before the shift::

       z = (acc * mult + res * res_mult + 2**(shift-1)) >> shift   # floor shift = round half up

4. Optional ReLU ``z = max(z, 0)``.
5. Saturation to int8: ``y = clamp(z, -128, 127)``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "INT8_MIN", "INT8_MAX", "ACC_BITS", "MULT_BITS", "RES_MULT_BITS", "SHIFT_MIN", "SHIFT_MAX",
    "wrap_int32", "saturate_int8", "requantize", "quantize_multiplier", "quantize_tensor",
    "check_requant_params",
]

INT8_MIN = -128
INT8_MAX = 127
ACC_BITS = 32          # accumulator width, wraps modulo 2**32
MULT_BITS = 16         # mult is unsigned, 0 <= mult < 2**16
RES_MULT_BITS = 24     # res_mult is unsigned, 0 <= res_mult < 2**24
SHIFT_MIN = 1
SHIFT_MAX = 47


def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """Reduce integers modulo 2**32 into the int32 range (two's complement wrap).

    Parameters
    ----------
    x : torch.Tensor
        Integer tensor of any integer dtype.

    Returns
    -------
    torch.Tensor
        ``int64`` tensor with values in [-2**31, 2**31).
    """
    x = x.to(torch.int64)
    return ((x + 2**31) & (2**32 - 1)) - 2**31


def saturate_int8(z: torch.Tensor) -> torch.Tensor:
    """Clamp to [-128, 127] and return ``int8``."""
    return z.clamp(INT8_MIN, INT8_MAX).to(torch.int8)


def check_requant_params(mult, shift, res_mult=None) -> None:
    """Raise ``ValueError`` if requantization parameters are outside the documented ranges."""
    mult = torch.as_tensor(mult)
    shift = torch.as_tensor(shift)
    if mult.numel() and (int(mult.min()) < 0 or int(mult.max()) >= 2**MULT_BITS):
        raise ValueError(f"mult must lie in [0, 2**{MULT_BITS}), got range "
                         f"[{int(mult.min())}, {int(mult.max())}]")
    if shift.numel() and (int(shift.min()) < SHIFT_MIN or int(shift.max()) > SHIFT_MAX):
        raise ValueError(f"shift must lie in [{SHIFT_MIN}, {SHIFT_MAX}], got range "
                         f"[{int(shift.min())}, {int(shift.max())}]")
    if res_mult is not None:
        res_mult = torch.as_tensor(res_mult)
        if res_mult.numel() and (int(res_mult.min()) < 0
                                 or int(res_mult.max()) >= 2**RES_MULT_BITS):
            raise ValueError(f"res_mult must lie in [0, 2**{RES_MULT_BITS}), got range "
                             f"[{int(res_mult.min())}, {int(res_mult.max())}]")


def requantize(acc: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor, *,
               residual: torch.Tensor | None = None, res_mult: torch.Tensor | None = None,
               relu: bool = False, channel_dim: int = 1) -> torch.Tensor:
    """Requantize int32 accumulators to int8 (rules 3-5 of the module docstring).

    Parameters
    ----------
    acc : torch.Tensor
        Accumulators (already wrapped to int32 by :func:`wrap_int32`), e.g. ``[N, C, H, W]``.
    mult, shift : torch.Tensor
        Per-output-channel multiplier and shift, shape ``[C]``.
    residual : torch.Tensor, optional
        int8 tensor of the same shape as ``acc``, added as ``residual * res_mult``.
    res_mult : torch.Tensor, optional
        Per-output-channel residual multiplier, shape ``[C]``; required with ``residual``.
    relu : bool
        Apply ReLU before saturation.
    channel_dim : int
        Dimension of ``acc`` that indexes output channels.

    Returns
    -------
    torch.Tensor
        ``int8`` tensor of the shape of ``acc``.
    """
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    m = torch.as_tensor(mult, dtype=torch.int64).reshape(shape)
    s = torch.as_tensor(shift, dtype=torch.int64).reshape(shape)
    z = acc.to(torch.int64) * m
    if residual is not None:
        if res_mult is None:
            raise ValueError("residual given without res_mult")
        n = torch.as_tensor(res_mult, dtype=torch.int64).reshape(shape)
        z = z + residual.to(torch.int64) * n
    z = (z + (torch.ones_like(s) << (s - 1))) >> s
    if relu:
        z = z.clamp_min(0)
    return saturate_int8(z)


def quantize_multiplier(real: float, *, res_real: float | None = None) -> tuple[int, int, int]:
    """Choose ``(mult, shift, res_mult)`` approximating ``acc*real + res*res_real``.

    The largest shift is chosen such that ``mult < 2**16`` and ``res_mult < 2**24`` (so both
    keep as many significant bits as the hardware holds), within [1, 47].

    Parameters
    ----------
    real : float
        Positive real scale of the accumulator (``s_in * s_w / s_out``).
    res_real : float, optional
        Positive real scale of the residual (``s_res / s_out``).

    Returns
    -------
    tuple of int
        ``(mult, shift, res_mult)``; ``res_mult`` is 0 without a residual.

    Raises
    ------
    ValueError
        If a scale is not finite and positive, or cannot be represented.
    """
    for name, v in (("real", real), ("res_real", res_real)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} scale must be finite and > 0, got {v!r}")
    shift = SHIFT_MAX
    # largest shift with round(real * 2**shift) < 2**MULT_BITS
    while shift > SHIFT_MIN and round(real * 2.0**shift) >= 2**MULT_BITS:
        shift -= 1
    if res_real is not None:
        while shift > SHIFT_MIN and round(res_real * 2.0**shift) >= 2**RES_MULT_BITS:
            shift -= 1
    mult = int(round(real * 2.0**shift))
    res_mult = int(round(res_real * 2.0**shift)) if res_real is not None else 0
    if mult >= 2**MULT_BITS or res_mult >= 2**RES_MULT_BITS:
        raise ValueError(f"scale too large to represent: real={real!r}, res_real={res_real!r}")
    return mult, shift, res_mult


def quantize_tensor(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Float to int8: ``clamp(round_half_even(x / scale), -128, 127)`` (host side only)."""
    return torch.round(x / scale).clamp(INT8_MIN, INT8_MAX).to(torch.int8)
