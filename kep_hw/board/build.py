# SPDX-License-Identifier: Apache-2.0
"""Build a bitstream of the KEP system for a board with open tools (Yosys, nextpnr, ecppack).

``python -m kep_hw.build --board ulx3s --model model.kep [--pes N] [--freq MHZ] [--out DIR]
[--weights auto|embedded|stream] [--program] [--dry-run]``

Writes to ``--out``: the bitstream ``kep_top.bit``, ``report.json`` (utilisation used and
available, requested and achieved fmax, timing met, P, board, weight mode, tool versions,
seconds), ``summary.txt`` and the build folder with all tool inputs and logs. Before running
the tools, a resource estimate checks the board's budget; a design that does not fit (by the
estimate or by nextpnr) or misses timing is reported in one line naming what overflowed and
the largest ``--pes`` that the estimate says fits. Without ``--model`` a small built-in test
network is used (the CI smoke configuration).
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

from kep_common.errors import KepError, cli_errors
from kep_common.fileio import atomic_write_bytes, atomic_write_json, environment_info

from kep_hw.board.profiles import list_boards, load_board
from kep_hw.gateware.params import parse_pes
from kep_hw.system.plan import PARAM_WORD_BITS, WEIGHT_ELEM_BITS, NetworkPlan, plan_network

__all__ = ["estimate_resources", "largest_fitting_pes", "parse_nextpnr_log", "parse_yosys_stats",
           "parse_pes", "main"]

BRAM_BITS = 18432          # DP16KD
LUT_BASE = 4000            # UART, frames, sequencer, address arithmetic, requantization
#: LUT4s per PE (9:1 x 8-bit mux, 32-bit accumulator, pipeline and output registers), fitted
#: to the 85F build (P = 64 as 16x4: 15,678 LUT4 + 2,078 CCU2)
LUT_PER_PE = 250
#: DSPs besides the one per PE: ``DSP_PER_LANE * G + DSP_BASE`` for the G requantization lanes
#: (32x16 and 8x24 products) and address multipliers; fitted to the 85F build (99 with P = 64,
#: G = 8)
DSP_PER_LANE = 4
DSP_BASE = 3


def _bram_blocks(width: int, depth: int) -> int:
    """DP16KD blocks of a ``width`` x ``depth`` memory (best of the x36 / x18 / x9 shapes)."""
    best = None
    for w, d in ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)):
        n = math.ceil(width / w) * math.ceil(depth / d)
        best = n if best is None else min(best, n)
    return best


def estimate_resources(plan: NetworkPlan, *, streamed: bool, px: int = 1) -> dict:
    """Estimated LUT4s, DSPs (MULT18X18D) and block RAMs (DP16KD) of a system.

    The LUT estimate is a linear fit (``LUT_BASE + LUT_PER_PE * P``); DSPs are one per PE plus
    the requantization lanes; block RAMs follow the memories' widths and depths exactly.
    ``plan.po`` is Po (output channels per group), the engine has ``P = Po * px`` PEs.
    """
    P, G = plan.po * px, plan.lanes
    wt_depth = plan.max_layer_weight_words if streamed else plan.weight_words
    prm_depth = plan.max_layer_param_words if streamed else plan.param_words
    brams = sum(_bram_blocks(8 * G, d) for d in plan.buffer_words)
    brams += _bram_blocks(WEIGHT_ELEM_BITS * plan.po, wt_depth) + _bram_blocks(PARAM_WORD_BITS,
                                                                          prm_depth)
    return {"luts": LUT_BASE + LUT_PER_PE * P, "dsps": P + DSP_PER_LANE * G + DSP_BASE,
            "brams": brams}


def _overflow(est: dict, board) -> list:
    return [f"{k} {est[k]} > {getattr(board, k)}" for k in ("luts", "dsps", "brams")
            if est[k] > getattr(board, k)]


def largest_fitting_pes(kep, board, *, lanes: int, streamed: bool, limit: int = 256,
                        px: int = 1) -> int:
    """Largest P (a multiple of ``lanes * px``) whose estimate fits ``board``; 0 if none."""
    best = 0
    for pes in range(lanes * px, limit + 1, lanes * px):
        plan = plan_network(kep, po=pes // px, lanes=lanes)
        if not _overflow(estimate_resources(plan, streamed=streamed, px=px), board):
            best = pes
    return best


_UTIL = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at "
                   r"([\d.]+) MHz\)")


def parse_nextpnr_log(text: str) -> dict:
    """Utilisation and timing from a nextpnr-ecp5 log.

    Returns
    -------
    dict
        ``utilisation``: ``{cell: (used, available)}`` from the last "Device utilisation"
        table; ``clocks``: ``{clock: {"fmax_mhz", "target_mhz", "pass"}}`` from the last
        "Max frequency for clock" line of each clock (after routing).
    """
    util = {}
    idx = text.rfind("Device utilisation")
    if idx >= 0:
        for cell, used, avail in _UTIL.findall(text[idx:idx + 4000]):
            util.setdefault(cell, (int(used), int(avail)))
    clocks = {}
    for clk, fmax, verdict, target in _FMAX.findall(text):
        clocks[clk] = {"fmax_mhz": float(fmax), "target_mhz": float(target),
                       "pass": verdict == "PASS"}
    return {"utilisation": util, "clocks": clocks}


def parse_yosys_stats(text: str) -> dict:
    """Cell counts of the last ``stat`` section of a Yosys log (``{cell type: count}``)."""
    idx = text.rfind("Number of cells")
    if idx < 0:
        return {}
    cells = {}
    for line in text[idx:].splitlines()[1:]:
        m = re.match(r"^\s+(\d+)\s+\S*\s*(\$?[A-Za-z_][\w$]*)\s*$", line) or \
            re.match(r"^\s+(\$?[A-Za-z_][\w$]*)\s+(\d+)\s*$", line)
        if not m:
            if cells:
                break
            continue
        a, b = m.groups()
        name, count = (b, a) if a.isdigit() else (a, b)
        cells[name] = int(count)
    return cells


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kep_hw.build", description=__doc__.split("\n")[0])
    p.add_argument("--board", default="ulx3s",
                   help=f"board profile ({', '.join(list_boards())}; ulx3s = ulx3s-85f)")
    p.add_argument("--model", default=None, help=".kep model (default: small test network)")
    p.add_argument("--pes", default=None,
                   help="P, or PxPX: P PEs as PX output pixels x P/PX channels "
                        "(default: the board's)")
    p.add_argument("--lanes", type=int, default=None,
                   help="channels per activation word (default: the board's, else 4)")
    p.add_argument("--freq", type=float, default=None, help="core clock MHz (board default)")
    p.add_argument("--weights", choices=("auto", "embedded", "stream"), default="auto",
                   help="embed all weights, stream them per layer, or choose by fit (auto)")
    p.add_argument("--out", default="build/kep", help="output folder (default build/kep)")
    p.add_argument("--baud", type=int, default=None, help="UART baud rate (board default)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    p.add_argument("--router", choices=("router2", "router1"), default="router2",
                   help="nextpnr router (router2 default: router1 did not converge on the 85F "
                        "with 64 PEs)")
    p.add_argument("--abc9", action="store_true",
                   help="map LUTs with Yosys' abc9 (synth_ecp5's own flow); by default "
                        "classic abc, because Yosys 0.70's abc9 aborts on the kep engine")
    p.add_argument("--program", action="store_true", help="load the bitstream with openFPGALoader")
    p.add_argument("--dry-run", action="store_true",
                   help="elaborate and write the tool inputs without running the tools")
    return p


def _load_network(model):
    if model is None:
        from kep_hw.testing import random_network
        return random_network(0)
    from kep_train.export.kepfile import load_kep
    return load_kep(model)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    args = _parser().parse_args(argv)
    t0 = time.monotonic()
    board = load_board(args.board)
    pes, px = parse_pes(args.pes) if args.pes is not None else (board.default_pes,
                                                                 board.default_px)
    if args.lanes is None:
        args.lanes = board.default_lanes
    if args.lanes < 1 or args.lanes & (args.lanes - 1):
        raise KepError(f"--lanes must be a power of two, got {args.lanes}")
    po = pes // px
    freq = args.freq or board.default_mhz
    baud = args.baud or board.baud
    if pes > 255 or po % args.lanes:
        raise KepError(f"--pes: P/PX must be a multiple of --lanes {args.lanes} and P at most "
                       f"255, got {pes}x{px}")
    if not 10 <= freq <= 200:
        raise KepError(f"--freq must lie in [10, 200] MHz, got {freq:g}")
    kep = _load_network(args.model)
    plan = plan_network(kep, po=po, lanes=args.lanes)
    if args.weights == "auto":
        streamed = bool(_overflow(estimate_resources(plan, streamed=False, px=px), board))
    else:
        streamed = args.weights == "stream"
    est = estimate_resources(plan, streamed=streamed, px=px)
    over = _overflow(est, board)
    if over:
        best = largest_fitting_pes(kep, board, lanes=args.lanes, streamed=streamed,
                                   px=px)
        raise KepError(f"does not fit {board.name} ({'streamed' if streamed else 'embedded'} "
                       f"weights, P={pes}): estimated {', '.join(over)}; largest --pes that "
                       f"fits: {best or 'none'}")

    from kep_hw.board.pll import ecp5_pll_params
    from kep_hw.board.top import BoardTop
    from kep_hw.system.top import KepSystem
    from kep_hw.board.toolchain import configure_amaranth, find_toolchain, tool_versions
    from kep_hw.gateware.uart import uart_divisor
    try:
        pll = ecp5_pll_params(board.clk_mhz, freq)
        divisor = uart_divisor(pll["fout"] * 1e6, baud)
    except ValueError as e:
        raise KepError(str(e)) from None
    found = find_toolchain(need_programmer=args.program)
    configure_amaranth(found)
    system = KepSystem(plan, streamed=streamed, divisor=divisor, clk_hz=pll["fout"] * 1e6,
                       byte_timeout=int(pll["fout"] * 1e6 * 0.05), px=px)
    top = BoardTop(system, board, freq)
    platform = board.make_platform()
    out = Path(args.out)
    build_dir = out / "build"
    name = "kep_top"
    overrides = {"nextpnr_opts": f"--timing-allow-fail --seed {args.seed} "
                                 f"--router {args.router}"}
    if not args.abc9:
        # synth_ecp5 up to its LUT mapping, classic ABC for the LUTs, then the rest of it
        overrides["synth_opts"] = "-run :map_luts"
        overrides["script_after_synth"] = "\n".join([
            "techmap -map +/lattice/latches_map.v", "abc -lut 4", "clean",
            f"synth_ecp5 -top {name} -run map_cells:"])
    if args.dry_run:
        products = platform.build(top, name=name, build_dir=build_dir, do_build=False,
                                  **overrides)
        products.extract(build_dir) if hasattr(products, "extract") else None
        status = "dry-run"
        log, util, clocks, stats = "", {}, {}, {}
    else:
        try:
            platform.build(top, name=name, build_dir=build_dir, **overrides)
        except subprocess.CalledProcessError as e:
            tail = ""
            tim = build_dir / f"{name}.tim"
            if tim.exists():
                errs = [ln for ln in tim.read_text().splitlines() if "ERROR" in ln]
                tail = errs[-1] if errs else ""
            best = largest_fitting_pes(kep, board, lanes=args.lanes, streamed=streamed,
                                       px=px)
            raise KepError(f"the tools failed ({e.cmd[0] if e.cmd else 'build'}): "
                           f"{tail or 'see ' + str(build_dir)}; largest --pes that fits by "
                           f"the estimate: {best}") from None
        log = (build_dir / f"{name}.tim").read_text()
        parsed = parse_nextpnr_log(log)
        util, clocks = parsed["utilisation"], parsed["clocks"]
        stats = parse_yosys_stats((build_dir / f"{name}.rpt").read_text())
        shutil.copyfile(build_dir / f"{name}.bit", out / f"{name}.bit")
        status = "built"
    core = {k: v for k, v in clocks.items() if "clkop" in k.lower() or "sync" in k.lower()}
    core = core or clocks
    fmax = min((c["fmax_mhz"] for c in core.values()), default=None)
    met = all(c["pass"] for c in core.values()) if core else None

    def used(cell):
        return {"used": util[cell][0], "available": util[cell][1]} if cell in util else None

    report = {
        "board": board.name, "device": board.device, "status": status, "pes": pes,
        "px": px, "po": po,
        "lanes": args.lanes, "weights": "streamed" if streamed else "embedded",
        "abc9": args.abc9,
        "model": str(args.model) if args.model else "built-in test network",
        "layers": len(plan.layers), "uart_baud": baud, "uart_divisor": divisor,
        "freq_requested_mhz": freq, "freq_pll_mhz": pll["fout"], "fmax_mhz": fmax,
        "timing_met": met, "clocks": clocks,
        "utilisation": {"luts": used("TRELLIS_COMB"), "ffs": used("TRELLIS_FF"),
                        "dsps": used("MULT18X18D"), "brams": used("DP16KD")},
        "estimate": est, "budget": {"luts": board.luts, "dsps": board.dsps,
                                    "brams": board.brams},
        "yosys_cells": stats, "tools": tool_versions(found),
        "seconds": time.monotonic() - t0, "environment": environment_info(),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    lines = [f"{board.name} ({board.device}), P={pes} ({po} channels x {px} pixels), "
             f"{report['weights']} weights, "
             f"{len(plan.layers)} layers, {status}"]
    for k, v in report["utilisation"].items():
        if v:
            lines.append(f"  {k:6s} {v['used']:6d} / {v['available']:6d}")
    if fmax is not None:
        lines.append(f"  clock  requested {freq:g} MHz (PLL {pll['fout']:.3f}), fmax "
                     f"{fmax:.2f} MHz, timing {'met' if met else 'MISSED'}")
    lines.append(f"  UART   {baud} baud (divisor {divisor}); {report['seconds']:.0f} s")
    atomic_write_bytes(out / "summary.txt", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    if status == "built" and met is False:
        best = largest_fitting_pes(kep, board, lanes=args.lanes, streamed=streamed,
                                   px=px)
        raise KepError(f"timing missed: fmax {fmax:.2f} MHz < {pll['fout']:.2f} MHz requested; "
                       f"try a lower --freq or --pes (largest fitting by estimate: {best})")
    if args.program:
        cmd = [found["openFPGALoader"][0], *board.program, str(out / f"{name}.bit")]
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise KepError(f"programming failed: {e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
