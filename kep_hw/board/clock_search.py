# SPDX-License-Identifier: Apache-2.0
"""The clock search of ``python -m kep_hw.build --freq auto``: the clocks a board can run, the
clock to try next, and the record of finished tries that makes a search resumable.

A clock is *acceptable* when the board's ECP5 PLL makes it exactly from the oscillator
(:func:`acceptable_clocks`: every ``fin / CLKI_DIV * CLKFB_DIV`` within the ``EHXPLLL`` limits of
:mod:`kep_hw.board.pll`) and the UART's divisor at the board's baud rate is within its 2 % rate
error (:func:`kep_hw.gateware.uart.uart_divisor`): at 3 Mbaud, clocks near a multiple of 3 MHz.
:func:`next_clock` chooses the next try from the tries done; :class:`TryStore` keeps finished
tries in ``clock_search.json``, keyed by :func:`design_key` (the generated tool inputs, clock,
seed and tools), so that running the same command again skips them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

from kep_common.errors import KepError
from kep_common.fileio import atomic_write_json

from kep_hw.board.pll import ECP5_LIMITS

__all__ = ["acceptable_clocks", "next_clock", "design_key", "try_folder_name", "TryStore",
           "STORE_NAME"]

#: the record of finished tries in the output folder
STORE_NAME = "clock_search.json"
#: two clocks closer than this (MHz) are the same clock
_SAME_MHZ = 1e-6
#: Amaranth's source-location attributes: they name Python lines, not logic, and are left out
#: of the design key (moving a line of the RTL does not make finished tries stale)
_SRC_ATTR = re.compile(rb"^\s*attribute \\src .*\n?", re.M)


def acceptable_clocks(fin_mhz: float, baud: int, *, lo: float = 10.0,
                      hi: float = 200.0) -> list[float]:
    """Clocks in ``[lo, hi]`` MHz that the ECP5 PLL makes exactly from ``fin_mhz`` and at which
    the UART runs ``baud`` (ascending).

    Parameters
    ----------
    fin_mhz : float
        The board's oscillator.
    baud : int
        The board's UART rate.
    lo, hi : float
        The range of core clocks the build accepts.

    Returns
    -------
    list of float
        ``fin / CLKI_DIV * CLKFB_DIV`` for every divider pair whose phase detector frequency
        and some ``CLKOP_DIV``'s VCO frequency are in range, rounded to 1 Hz, without the
        clocks whose UART divisor :func:`~kep_hw.gateware.uart.uart_divisor` refuses.
    """
    return list(_acceptable_clocks(float(fin_mhz), int(baud), float(lo), float(hi)))


@functools.lru_cache(maxsize=16)
def _acceptable_clocks(fin_mhz: float, baud: int, lo: float, hi: float) -> tuple[float, ...]:
    from kep_hw.gateware.uart import uart_divisor
    lim = ECP5_LIMITS
    vco_lo, vco_hi = lim["vco_mhz"]
    clocks = set()
    for refdiv in range(lim["clki_div"][0], lim["clki_div"][1] + 1):
        pfd = fin_mhz / refdiv
        if not lim["pfd_mhz"][0] <= pfd <= lim["pfd_mhz"][1]:
            continue
        for fbdiv in range(lim["clkfb_div"][0], lim["clkfb_div"][1] + 1):
            fout = pfd * fbdiv
            if not (lo <= fout <= hi and lim["output_mhz"][0] <= fout <= lim["output_mhz"][1]):
                continue
            if any(vco_lo <= fout * op <= vco_hi
                   for op in range(lim["clkop_div"][0], lim["clkop_div"][1] + 1)):
                clocks.add(round(fout, 6))
    out = []
    for f in sorted(clocks):
        try:
            uart_divisor(f * 1e6, baud)
        except ValueError:
            continue
        out.append(f)
    return tuple(out)


def _same(a: float, b: float) -> bool:
    return abs(a - b) < _SAME_MHZ


def next_clock(board, baud: int, tries: list[dict], *, seeds=(1,), lo: float = 10.0,
               hi: float = 200.0) -> tuple[float, int] | None:
    """The next try of a clock search, or ``None`` when the search is done.

    Parameters
    ----------
    board : BoardProfile
        The board (its oscillator ``clk_mhz``).
    baud : int
        The UART rate.
    tries : list of dict
        The tries done, in order, each with ``freq_pll_mhz`` (the clock the PLL made),
        ``seed``, ``fmax_mhz`` (nextpnr's fmax after routing, ``None`` if it printed none) and
        ``timing_met``.
    seeds : sequence of int
        nextpnr seeds, in the order they are tried.
    lo, hi : float
        The range of core clocks the build accepts.

    Returns
    -------
    tuple or None
        ``(clock MHz, seed)``. After a miss, the same clock with the next seed not yet tried
        there. Otherwise, with the first seed, the highest acceptable clock
        (:func:`acceptable_clocks`) that is at most the best fmax reported at the last try's
        clock, above every clock that met timing, below every clock that missed with all
        seeds and not tried before. ``None`` when there is no such clock or the last try
        reported no fmax.
    """
    if not tries or tries[-1].get("fmax_mhz") is None:
        return None
    seeds = list(seeds)
    last = tries[-1]
    f = last["freq_pll_mhz"]
    at_f = [t for t in tries if _same(t["freq_pll_mhz"], f)]
    if not last["timing_met"]:
        tried = {t["seed"] for t in at_f}
        for s in seeds:
            if s not in tried:
                return f, s
    ref = max(t["fmax_mhz"] for t in at_f if t.get("fmax_mhz") is not None)
    best_met = max((t["freq_pll_mhz"] for t in tries if t["timing_met"]), default=None)
    # clocks where every seed missed: the search does not go back to or above them
    ceiling = None
    for t in tries:
        g = t["freq_pll_mhz"]
        same = [u for u in tries if _same(u["freq_pll_mhz"], g)]
        if not any(u["timing_met"] for u in same) and set(seeds) <= {u["seed"] for u in same}:
            ceiling = g if ceiling is None else min(ceiling, g)
    done = [t["freq_pll_mhz"] for t in tries]
    cands = [c for c in acceptable_clocks(board.clk_mhz, baud, lo=lo, hi=hi)
             if c <= ref + _SAME_MHZ
             and (best_met is None or c > best_met + _SAME_MHZ)
             and (ceiling is None or c < ceiling - _SAME_MHZ)
             and not any(_same(c, d) for d in done)]
    return (cands[-1], seeds[0]) if cands else None


def design_key(files: dict, *, freq_mhz: float, seed: int, tools: dict | None = None) -> str:
    """A hash of a try's design inputs (SHA-256, hex).

    Parameters
    ----------
    files : dict
        ``{name: str or bytes}``: the build plan's files (RTLIL / Verilog, Yosys script,
        constraints, build script); Amaranth's ``attribute \\src`` lines are left out.
    freq_mhz : float
        The core clock.
    seed : int
        The nextpnr seed.
    tools : dict, optional
        What identifies the toolchain that runs the try (JSON values: paths, versions).
    """
    h = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        if isinstance(content, str):
            content = content.encode()
        h.update(name.encode() + b"\0" + _SRC_ATTR.sub(b"", content) + b"\0")
    meta = {"freq_mhz": round(float(freq_mhz), 6), "seed": int(seed),
            "tools": tools or {}}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def try_folder_name(freq_mhz: float, seed: int) -> str:
    """``<MHz>-s<seed>``, the clock with at most 3 decimals: ``47.917-s1``, ``30-s2``."""
    mhz = f"{freq_mhz:.3f}".rstrip("0").rstrip(".")
    return f"{mhz}-s{seed}"


class TryStore:
    """Finished tries of a clock search, in ``clock_search.json`` of the output folder.

    ``{"format": 1, "tries": {design key: record}}``, rewritten atomically after each try, so
    that an interrupted search loses at most the try that was running.

    Raises
    ------
    KepError
        If the file exists but is not such a record.
    """

    FORMAT = 1

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tries: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                ok = (isinstance(data, dict) and data.get("format") == self.FORMAT
                      and isinstance(data.get("tries"), dict)
                      and all(isinstance(v, dict) for v in data["tries"].values()))
            except (OSError, UnicodeDecodeError, ValueError):
                ok = False
            if not ok:
                raise KepError(f"{self.path} is not a clock search record of this version; "
                               f"delete it to start the search over")
            self.tries = data["tries"]

    def get(self, key: str) -> dict | None:
        """The record of a finished try, or ``None``."""
        return self.tries.get(key)

    def put(self, key: str, record: dict) -> None:
        """Record a finished try (and write the file)."""
        self.tries[key] = record
        atomic_write_json(self.path, {"format": self.FORMAT, "tries": self.tries})
