# SPDX-License-Identifier: Apache-2.0
"""Engine parameters (the hardware's size) and the layer configuration a host writes.

:class:`EngineParams` fixes P (PEs) and their split ``P = Po x Px`` over output channels and
output pixels, G (channels per activation word) and the limits; :func:`parse_pes` reads the
``--pes P[xPX]`` option of the command lines; :func:`layer_config` turns a layer shape into the
values of every configuration register of ``docs/accelerator.md`` (derived registers included).
"""

from __future__ import annotations

import dataclasses
import math

from kep_common.errors import KepError

from kep_hw.gateware import layouts

__all__ = ["EngineParams", "check_params", "parse_pes", "layer_config"]


def _bits(n: int) -> int:
    """Bits of an unsigned field holding values 0..n."""
    return max(1, int(n).bit_length())


@dataclasses.dataclass(frozen=True)
class EngineParams:
    """Size of one engine instance.

    Parameters
    ----------
    pes : int
        P, processing elements: ``Po x Px``.
    lanes : int
        G, int8 channels per activation / residual word and requantization lanes;
        ``Po % lanes == 0``.
    max_cin, max_cout : int
        Largest input / output channel count of a layer.
    max_hw : int
        Largest input height and width.
    act_depth, wt_depth, prm_depth : int
        Words of the activation (+ residual), weight and parameter address spaces.
    px : int
        Px, output pixels per block (the PEs' split ``P = Po x Px``).
    rq_lanes : int, optional
        L, lanes of the requantization unit (outputs per cycle); it runs once per output, not
        per MAC, so it needs only ``nv * Po / L`` cycles per block of ``nv`` pixels; divides
        ``lanes`` (default: ``lanes``).
    lut_pes : int
        PEs whose multiplier is built from logic instead of a DSP block
        (:mod:`kep_hw.gateware.mul`), for more PEs than the chip has DSPs (default 0).
    operand_reg : bool
        A register per PE between its operand multiplexer and its multiplier (in logic, so
        the placer can put it beside the DSP block): one more MAC pipeline stage (S2R in
        ``docs/accelerator.md``), for large P where the window register's fanout to the
        P multiplexers and the multiplexers' routes to the DSP blocks span the die
        (default False).
    dist_reg : bool
        One more register level for the weight word, the window and the MAC flags before
        they leave for the pixel groups (S1D in ``docs/accelerator.md``): the weight word
        (values with the K = 0 zero applied, indices or the dense element counter) in one
        register after the weight memory's bank multiplexer, from which each pixel group's S2
        registers load, so the route from the centre to a group's PEs runs from a register to
        a register with no logic on it. One more MAC pipeline stage; needs ``px > 1`` and not
        ``chain`` (whose groups load from each other). Default False.
    chain : bool
        The pixel groups in a chain: group ``q`` takes the weight word (values, indices) and
        the MAC flags from group ``q - 1``'s registers one cycle later, and its window
        through ``q`` registers, so it runs ``q`` cycles behind group 0 (``docs/accelerator.md``,
        "Pixel-group chain"). No net then carries the weight word to all Px groups of PEs
        spread over the DSP rows. Costs ``Px - 1`` cycles per layer and per block whose
        shadow register hand-over bounds it (default False: at P = 128 on the 85F it moved
        the router's congestion instead of lowering it, ``docs/boards.md``).
    """

    pes: int = 16
    lanes: int = 4
    max_cin: int = 64
    max_cout: int = 64
    max_hw: int = 32
    act_depth: int = 8192
    wt_depth: int = 4096
    prm_depth: int = 256
    px: int = 1
    rq_lanes: int | None = None
    lut_pes: int = 0
    operand_reg: bool = False
    chain: bool = False
    dist_reg: bool = False

    def __post_init__(self):
        if self.rq_lanes is None:
            object.__setattr__(self, "rq_lanes", self.lanes)
        for name in ("pes", "lanes", "max_cin", "max_cout", "max_hw", "act_depth", "wt_depth",
                     "prm_depth", "px", "rq_lanes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.pes % self.px:
            raise ValueError(f"pes ({self.pes!r}) must be a multiple of px ({self.px!r})")
        if self.po % self.lanes:
            raise ValueError(f"pes / px ({self.po!r}) must be a multiple of lanes "
                             f"({self.lanes!r})")
        if self.lanes % self.rq_lanes:
            raise ValueError(f"rq_lanes ({self.rq_lanes!r}) must divide lanes "
                             f"({self.lanes!r})")
        if not isinstance(self.lut_pes, int) or isinstance(self.lut_pes, bool) \
                or not 0 <= self.lut_pes <= self.pes:
            raise ValueError(f"lut_pes must be an integer in [0, pes], got {self.lut_pes!r}")
        if not isinstance(self.operand_reg, bool):
            raise ValueError(f"operand_reg must be a bool, got {self.operand_reg!r}")
        if not isinstance(self.chain, bool):
            raise ValueError(f"chain must be a bool, got {self.chain!r}")
        if not isinstance(self.dist_reg, bool):
            raise ValueError(f"dist_reg must be a bool, got {self.dist_reg!r}")
        if self.dist_reg and (self.px == 1 or self.chain):
            raise ValueError("dist_reg needs px > 1 and no chain (it feeds the pixel groups' "
                             "S2 registers from one register each)")
        if self.px > 16:
            raise ValueError(f"px must be at most 16, got {self.px!r}")
        if self.max_hw > 255 or max(self.max_cin, self.max_cout) > 1023:
            raise ValueError(f"limits too large: max_hw={self.max_hw!r}, "
                             f"max_cin={self.max_cin!r}, max_cout={self.max_cout!r}")

    @property
    def po(self) -> int:
        """Po, output channels per group (the PEs of one output pixel)."""
        return self.pes // self.px

    @property
    def format_params(self) -> "EngineParams":
        """The ``Px = 1`` engine with the same Po and limits.

        Both engines use the same memory images, configuration registers and output stream
        (one transfer per output pixel and group); only the cycle counts differ. Host code that
        packs words from ``pes`` (e.g. :func:`kep_hw.host.driver.layer_program`) gets this engine.
        """
        if self.px == 1 and self.lut_pes == 0 and not self.operand_reg and not self.chain:
            return self
        return dataclasses.replace(self, pes=self.po, px=1, lut_pes=0, operand_reg=False,
                                   chain=False, dist_reg=False)

    def skew(self, q: int) -> int:
        """Cycles pixel group ``q`` runs behind group 0 (``q`` in a chain, else 0)."""
        return q if self.chain else 0

    # field widths
    @property
    def chan_bits(self) -> int:
        return _bits(max(self.max_cin, self.max_cout))

    @property
    def dim_bits(self) -> int:
        return _bits(self.max_hw)

    @property
    def group_bits(self) -> int:
        return _bits(math.ceil(self.max_cout / self.po))

    @property
    def act_bits(self) -> int:
        return _bits(self.act_depth - 1)

    @property
    def wt_bits(self) -> int:
        return _bits(self.wt_depth - 1)

    @property
    def prm_bits(self) -> int:
        return _bits(self.prm_depth - 1)

    @property
    def config_layout(self):
        """The :func:`kep_hw.gateware.layouts.layer_config` layout of this engine."""
        return layouts.layer_config(chan_bits=self.chan_bits, dim_bits=self.dim_bits,
                                    group_bits=self.group_bits, act_bits=self.act_bits,
                                    wt_bits=self.wt_bits, prm_bits=self.prm_bits)


def check_params(params) -> EngineParams:
    """``params`` itself, checked to be :class:`EngineParams` (the components' first check).

    Raises
    ------
    TypeError
        If it is not.
    """
    if not isinstance(params, EngineParams):
        raise TypeError(f"params must be EngineParams, got {params!r}")
    return params


def parse_pes(text: str, px: int | None = None) -> tuple[int, int]:
    """``"64"`` or ``"64x4"`` (P x Px) and an optional separate Px -> ``(P, Px)``.

    Parameters
    ----------
    text : str
        The ``--pes`` option: ``P`` or ``PxPX``.
    px : int, optional
        A separate ``--px`` option (default 1 when ``text`` has none).

    Raises
    ------
    KepError
        For a malformed value, two different Px, or a Px that does not divide P.
    """
    text = str(text).strip().lower()
    parts = text.split("x")
    try:
        pes = int(parts[0])
        split = int(parts[1]) if len(parts) == 2 else None
    except ValueError:
        pes = split = 0
    if len(parts) > 2 or pes < 1 or (split is not None and split < 1):
        raise KepError(f"--pes must be P or PxPX (e.g. 64x4), got {text!r}")
    if split is not None and px is not None and split != px:
        raise KepError(f"--pes {text} and --px {px} disagree")
    px = split if split is not None else (px if px is not None else 1)
    if px < 1 or pes % px:
        raise KepError(f"--pes {text}: P ({pes}) must be a multiple of px ({px})")
    return pes, px


def layer_config(params: EngineParams, *, cin: int, cout: int, h: int, w: int, k: int,
                 kept: int, stride: int, pad: int, relu: bool = False, residual: bool = False,
                 dense: bool = False, act_base: int = 0, res_base: int = 0, wt_base: int = 0,
                 prm_base: int = 0) -> dict:
    """Configuration register values of one layer.

    Parameters
    ----------
    params : EngineParams
        The engine that runs the layer.
    cin, cout, h, w : int
        Input channels, output channels, input height and width.
    k : int
        Kernel size (1 or 3).
    kept : int
        K, kept elements per plane (0..k*k); in dense mode it must be ``k*k``.
    stride, pad : int
        Stride (1 or 2) and zero padding (0 or 1).
    relu, residual, dense : bool
        Layer flags.
    act_base, res_base, wt_base, prm_base : int
        Base addresses.

    Returns
    -------
    dict
        Field values of ``params.config_layout``.

    Raises
    ------
    KepError
        If the layer does not fit the engine or an option is out of range.
    """
    if k not in (1, 3):
        raise KepError(f"kernel size must be 1 or 3, got {k!r}")
    if stride not in (1, 2):
        raise KepError(f"stride must be 1 or 2, got {stride!r}")
    if pad not in (0, 1):
        raise KepError(f"padding must be 0 or 1, got {pad!r}")
    if not 0 <= kept <= k * k:
        raise KepError(f"K={kept!r} outside [0, {k * k}]")
    if dense and kept != k * k:
        raise KepError(f"dense mode needs K = k*k = {k * k}, got {kept!r}")
    if not (1 <= cin <= params.max_cin and 1 <= cout <= params.max_cout):
        raise KepError(f"channels {cin}->{cout} exceed the engine's limits "
                       f"{params.max_cin}->{params.max_cout}")
    if not (1 <= h <= params.max_hw and 1 <= w <= params.max_hw):
        raise KepError(f"input {h}x{w} exceeds the engine's limit {params.max_hw}")
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    if ho < 1 or wo < 1:
        raise KepError(f"input {h}x{w} too small for k={k}, pad={pad}")
    cwi = math.ceil(cin / params.lanes)
    cwo = math.ceil(cout / params.lanes)
    groups = math.ceil(cout / params.po)
    if max(act_base + h * w * cwi, res_base + (ho * wo * cwo if residual else 0)) \
            > params.act_depth:
        raise KepError(f"activations do not fit {params.act_depth} words")
    if wt_base + groups * cin * kept > params.wt_depth:
        raise KepError(f"weights do not fit {params.wt_depth} words")
    if prm_base + groups * params.po > params.prm_depth:
        raise KepError(f"parameters do not fit {params.prm_depth} words")
    return {
        "cin": cin, "cout": cout, "h": h, "w": w, "ho": ho, "wo": wo,
        "cwi": cwi, "cwo": cwo, "groups": groups, "k": k, "kk": kept,
        "stride": stride, "pad": pad, "relu": int(relu), "residual": int(residual),
        "dense": int(dense), "act_base": act_base, "res_base": res_base,
        "wt_base": wt_base, "prm_base": prm_base,
    }
