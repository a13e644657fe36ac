# SPDX-License-Identifier: Apache-2.0
"""The paper's sparse convolution in exact integer arithmetic (the golden layer).

Not a sliding window: for each kept element ``j`` of the planes, the zero-padded input shifted by
that element's offset ``(r_j, c_j)`` is scaled by its value and accumulated. Pruned elements are
never touched. See ``docs/arithmetic.md`` for the arithmetic and
:mod:`kep_train.golden.intarith` for requantization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kep_train.golden.intarith import requantize, wrap_int32

__all__ = ["sparse_conv2d_acc", "sparse_conv2d", "expand_dense", "check_sparse_planes"]


def check_sparse_planes(values: torch.Tensor, index: torch.Tensor, kernel_size: int) -> None:
    """Raise ``ValueError`` unless ``values``/``index`` are ``[Cout, Cin, K]`` with indices in
    ``[0, k*k)`` strictly ascending within every plane."""
    if values.shape != index.shape or values.dim() != 3:
        raise ValueError(f"values {tuple(values.shape)} and index {tuple(index.shape)} must both "
                         "be [Cout, Cin, K]")
    kk = kernel_size * kernel_size
    if index.shape[2] > kk:
        raise ValueError(f"K={index.shape[2]} exceeds k*k={kk}")
    if index.numel():
        idx = index.to(torch.int64)
        if int(idx.min()) < 0 or int(idx.max()) >= kk:
            raise ValueError(f"index outside [0, {kk})")
        if idx.shape[2] > 1 and not bool((idx[..., 1:] > idx[..., :-1]).all()):
            raise ValueError("indices must be strictly ascending within each plane")


def sparse_conv2d_acc(x: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                      bias: torch.Tensor | None = None, *, kernel_size: int = 3,
                      stride: int = 1, padding: int = 1) -> torch.Tensor:
    """int32 accumulators of the sparse convolution (bias included, wrapped modulo 2**32).

    Parameters
    ----------
    x : torch.Tensor
        int8 activations ``[N, Cin, H, W]``.
    values : torch.Tensor
        int8 kept values ``[Cout, Cin, K]``.
    index : torch.Tensor
        Positions ``r*k + c`` of the kept values, ``[Cout, Cin, K]``.
    bias : torch.Tensor, optional
        int32 ``[Cout]``.
    kernel_size, stride, padding : int
        Square kernel size, stride and zero padding.

    Returns
    -------
    torch.Tensor
        int64 tensor ``[N, Cout, H_out, W_out]`` holding int32 values.
    """
    n, cin, h, w = x.shape
    cout, cin_w, kept = values.shape
    if cin_w != cin:
        raise ValueError(f"input has {cin} channels, weights expect {cin_w}")
    k = kernel_size
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    # exact integer work in float64 would be exact too, but int64 keeps it obviously so
    xp = F.pad(x.to(torch.int64), (padding, padding, padding, padding))
    acc = torch.zeros(n, cout, ho, wo, dtype=torch.int64)
    v = values.to(torch.int64)
    idx = index.to(torch.int64)
    for r in range(k):
        for c in range(k):
            # only the elements whose index is r*k+c contribute through this shift
            sel = (idx == r * k + c)
            if not bool(sel.any()):
                continue
            wrc = (v * sel).sum(dim=2)                       # [Cout, Cin], zero elsewhere
            shifted = xp[:, :, r:r + stride * (ho - 1) + 1:stride,
                         c:c + stride * (wo - 1) + 1:stride]  # [N, Cin, Ho, Wo]
            acc += torch.einsum("oi,nihw->nohw", wrc, shifted)
    if bias is not None:
        acc += bias.to(torch.int64).view(1, -1, 1, 1)
    return wrap_int32(acc)


def sparse_conv2d(x: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                  bias: torch.Tensor | None, mult: torch.Tensor, shift: torch.Tensor, *,
                  kernel_size: int = 3, stride: int = 1, padding: int = 1, relu: bool = False,
                  residual: torch.Tensor | None = None,
                  res_mult: torch.Tensor | None = None) -> torch.Tensor:
    """One int8 KEP convolution layer: sparse conv, bias, requantization, residual, ReLU,
    saturation (``docs/arithmetic.md``). Returns int8 ``[N, Cout, H_out, W_out]``."""
    acc = sparse_conv2d_acc(x, values, index, bias, kernel_size=kernel_size, stride=stride,
                            padding=padding)
    return requantize(acc, mult, shift, residual=residual, res_mult=res_mult, relu=relu)


def expand_dense(values: torch.Tensor, index: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """Scatter ``[Cout, Cin, K]`` (value, index) planes into a dense ``[Cout, Cin, k, k]``
    tensor."""
    cout, cin, _ = values.shape
    dense = torch.zeros(cout, cin, kernel_size * kernel_size, dtype=values.dtype)
    dense.scatter_(2, index.to(torch.int64), values)
    return dense.view(cout, cin, kernel_size, kernel_size)
