# SPDX-License-Identifier: Apache-2.0
"""Cycle model of the engine (``docs/accelerator.md``), output stream always ready.

Per output-channel group the engine loads P parameter words, then computes every output pixel;
a pixel takes one MAC cycle per (input channel, kept element). The window fetcher supplies a
window (G channels) every ``k*k`` cycles from a two-entry FIFO, so a channel word costs
``max(nch * K, k*k)`` cycles, and the requantization unit needs ``P/G + 4`` cycles per pixel.
Between groups the pipeline drains before the next parameters load.
"""

from __future__ import annotations

import dataclasses
import math

from .params import EngineParams

__all__ = ["LayerShape", "layer_cycles", "ideal_cycles", "useful_macs"]

# pipeline constants, from the RTL (see the docstrings of engine.py / requant.py / fetch.py)
_START = 3          # start -> LOAD, LOAD -> RUN hand-over
_DRAIN = 11         # last MAC of a group -> next LOAD (S1, S2, shadow, requant issue + 3)
_END = 9            # last MAC of the layer -> last output transferred
_RQ_EXTRA = 4       # requantization period = P/G + 4


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """Shape of one convolution layer (batch of one).

    Parameters
    ----------
    cin, cout, h, w : int
        Channels and input size.
    k : int
        Kernel size (1 or 3).
    kept : int
        K, kept elements per plane (``k*k`` for dense mode).
    stride, pad : int
        Stride and zero padding.
    """

    cin: int
    cout: int
    h: int
    w: int
    k: int = 3
    kept: int = 4
    stride: int = 1
    pad: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        return ((self.h + 2 * self.pad - self.k) // self.stride + 1,
                (self.w + 2 * self.pad - self.k) // self.stride + 1)


def useful_macs(shape: LayerShape) -> int:
    """Non-zero MACs: ``Ho * Wo * Cout * Cin * K``."""
    ho, wo = shape.out_hw
    return ho * wo * shape.cout * shape.cin * shape.kept


def ideal_cycles(shape: LayerShape, params: EngineParams) -> float:
    """Useful MACs / P."""
    return useful_macs(shape) / params.pes


def layer_cycles(shape: LayerShape, params: EngineParams) -> int:
    """Predicted cycles from ``start`` to the last output transfer (LayerTop ``cycles``).

    Parameters
    ----------
    shape : LayerShape
        The layer.
    params : EngineParams
        The engine.

    Returns
    -------
    int
        Predicted cycle count.
    """
    P, G = params.pes, params.lanes
    ho, wo = shape.out_hw
    npix = ho * wo
    keff = max(shape.kept, 1)
    kkw = shape.k * shape.k
    groups = math.ceil(shape.cout / P)
    px = 0
    left = shape.cin
    while left > 0:
        nch = min(G, left)
        px += max(nch * keff, kkw)
        left -= nch
    px = max(px, P // G + _RQ_EXTRA)
    load = P + 2
    # the first window arrives k*k + 3 cycles after start; the first MAC waits for it
    first = max(_START + load, kkw + 3)
    return (first + groups * npix * px + (groups - 1) * (_DRAIN + load) + _END)
