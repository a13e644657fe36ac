# SPDX-License-Identifier: Apache-2.0
"""PLL settings of the supported FPGA families (ECP5 ``EHXPLLL``).

The divider search is the one of prjtrellis' ``ecppll`` (``libtrellis/tools/ecppll.cpp``,
``calc_pll_params``), with its frequency limits: every ``CLKI_DIV`` (1-128) whose phase detector
frequency lies in 3.125-400 MHz, every ``CLKFB_DIV`` (1-80) and ``CLKOP_DIV`` (1-128) whose VCO
lies in 400-800 MHz, feedback from ``CLKOP``; the lowest output error wins and, among equal
errors, the VCO closest to the middle of its range (600 MHz).
"""

from __future__ import annotations

import math

__all__ = ["ECP5_LIMITS", "ecp5_pll_params"]

#: ``EHXPLLL`` limits in MHz and divider ranges, as prjtrellis' ``ecppll`` has them
ECP5_LIMITS = {
    "input_mhz": (8.0, 400.0), "output_mhz": (10.0, 400.0), "pfd_mhz": (3.125, 400.0),
    "vco_mhz": (400.0, 800.0), "clki_div": (1, 128), "clkfb_div": (1, 80),
    "clkop_div": (1, 128),
}
#: the VCO frequency that breaks ties between settings of equal output error
VCO_MID_MHZ = 600.0
#: relative difference below which two output errors count as equal (floating-point noise)
_TIE = 1e-9


def ecp5_pll_params(fin_mhz: float, fout_mhz: float) -> dict:
    """Divider settings of an ECP5 ``EHXPLLL`` for ``fin -> fout`` (``CLKOP`` feedback).

    Parameters
    ----------
    fin_mhz : float
        Reference clock (the board's oscillator), 8-400 MHz.
    fout_mhz : float
        Wanted output clock, 10-400 MHz.

    Returns
    -------
    dict
        ``refdiv`` (``CLKI_DIV``), ``fbdiv`` (``CLKFB_DIV``), ``opdiv`` (``CLKOP_DIV``),
        ``fout`` and ``fvco`` (MHz) and ``err`` (``|fout - fout_mhz|``, MHz) of the setting
        with the lowest output error; among equal errors, the VCO closest to 600 MHz.

    Raises
    ------
    ValueError
        If a frequency is not a finite number in its range, or no setting comes within 1 % of
        ``fout_mhz``.
    """
    lim = ECP5_LIMITS
    for name, value, key in (("input", fin_mhz, "input_mhz"), ("output", fout_mhz, "output_mhz")):
        lo, hi = lim[key]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or \
                not lo <= value <= hi:
            raise ValueError(f"ECP5 PLL {name} frequency must lie in [{lo:g}, {hi:g}] MHz, got "
                             f"{value!r}")
    best = None
    vco_lo, vco_hi = lim["vco_mhz"]
    for refdiv in range(lim["clki_div"][0], lim["clki_div"][1] + 1):
        fpfd = fin_mhz / refdiv
        if not lim["pfd_mhz"][0] <= fpfd <= lim["pfd_mhz"][1]:
            continue
        for fbdiv in range(lim["clkfb_div"][0], lim["clkfb_div"][1] + 1):
            fout = fpfd * fbdiv
            # the VCO runs at fout * opdiv: only the dividers that put it in range
            op_lo = max(lim["clkop_div"][0], math.ceil(vco_lo / fout - _TIE))
            op_hi = min(lim["clkop_div"][1], math.floor(vco_hi / fout + _TIE))
            err = abs(fout - fout_mhz)
            for opdiv in range(op_lo, op_hi + 1):
                fvco = fout * opdiv
                if best is not None:
                    tol = _TIE * fout_mhz
                    if err > best["err"] + tol:
                        continue
                    if err >= best["err"] - tol and \
                            abs(fvco - VCO_MID_MHZ) >= abs(best["fvco"] - VCO_MID_MHZ):
                        continue
                best = dict(refdiv=refdiv, fbdiv=fbdiv, opdiv=opdiv, fout=fout, fvco=fvco,
                            err=err)
    if best is None or best["err"] > 0.01 * fout_mhz:
        raise ValueError(f"no ECP5 PLL setting for {fout_mhz!r} MHz from {fin_mhz!r} MHz")
    return best
