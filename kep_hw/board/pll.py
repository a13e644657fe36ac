# SPDX-License-Identifier: Apache-2.0
"""PLL settings of the supported FPGA families (ECP5 ``EHXPLLL``)."""

from __future__ import annotations

__all__ = ["ecp5_pll_params"]


def ecp5_pll_params(fin_mhz: float, fout_mhz: float) -> dict:
    """Divider settings of an ECP5 ``EHXPLLL`` for ``fin -> fout`` (VCO 400-800 MHz, PFD >=
    3.125 MHz), the closest output frequency found; keys ``refdiv``, ``fbdiv``, ``opdiv``,
    ``fout``, ``fvco``.

    Raises
    ------
    ValueError
        If no setting reaches within 1 % of ``fout_mhz``.
    """
    best = None
    for refdiv in range(1, 129):
        if fin_mhz / refdiv < 3.125:
            break
        for fbdiv in range(1, 81):
            fout = fin_mhz * fbdiv / refdiv
            for opdiv in range(1, 129):
                fvco = fout * opdiv
                if 400 <= fvco <= 800:
                    err = abs(fout - fout_mhz)
                    if best is None or err < best["err"]:
                        best = dict(refdiv=refdiv, fbdiv=fbdiv, opdiv=opdiv, fout=fout,
                                    fvco=fvco, err=err)
                    break
    if best is None or best["err"] > 0.01 * fout_mhz:
        raise ValueError(f"no ECP5 PLL setting for {fout_mhz!r} MHz from {fin_mhz!r} MHz")
    return best
