# SPDX-License-Identifier: Apache-2.0
"""Build a bitstream of the KEP system for a board with open tools (Yosys, nextpnr, ecppack).

``python -m kep_hw.build --board ulx3s --model model.kep [--pes N] [--freq MHZ | --freq auto
[--freq-start MHZ] [--seeds 1,2,3] [--max-tries N]] [--out DIR] [--weights auto|embedded|stream]
[--toolchain auto|native|yowasp] [--program] [--dry-run] [--quiet | --verbose]``

Writes to ``--out``: the bitstream ``kep_top.bit``, ``report.json`` (utilisation used and
available, requested and achieved fmax (after placement and after routing), timing met, the
worst critical paths from nextpnr's JSON report (``worst_paths``: from and to cell/port, total,
logic and routing ns, logic levels, biggest segments), P, board, weight mode, tool paths, kinds
and versions, seconds per stage), ``summary.txt`` (with the worst path in one line) and the build
folder with all tool inputs and logs. Before running the tools, a resource estimate checks the
board's budget; a design that does not fit (by the estimate or by nextpnr) or misses timing is
reported in one line naming what overflowed and the largest ``--pes`` that the estimate says
fits. Without ``--model`` a small built-in test network is used (the CI smoke configuration).

``--freq auto`` searches the fastest clock that meets timing (:mod:`kep_hw.board.clock_search`):
a first build at ``--freq-start`` (default: the board's clock), then builds at the highest clock
at most the reported fmax that the board's PLL makes exactly and its UART accepts, the next of
``--seeds`` at a clock that missed before a lower clock, at most ``--max-tries`` builds, each in
``--out``/``tries/<MHz>-s<seed>/``. The fastest try that met timing is the result
(``kep_top.bit``, ``report.json`` with ``clock_search``: every try and the search's seconds,
``summary.txt``). Finished tries are recorded in ``clock_search.json`` (keyed by a hash of the
tool inputs, clock, seed and tools): the same command again skips them and continues.

Progress goes to stderr as it happens, one line per stage (elaborate, synth, place and route,
pack, program) with the elapsed seconds, nextpnr's utilisation and fmax estimates as it prints
them, the worst path, each try of a clock search, and a line a minute while a tool is silent;
``--verbose`` also streams the tools' own logs, ``--quiet`` prints only errors (and the summary
on stdout).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from kep_common.errors import KepError, cli_errors
from kep_common.fileio import atomic_write_bytes, atomic_write_json, environment_info
from kep_common.log import add_logging_args, setup_logging, verbosity

from kep_hw.board.clock_search import (STORE_NAME, TryStore, design_key, next_clock,
                                       try_folder_name)
from kep_hw.board.floorplan import DSP_ROWS, FLOORPLANS, pe_sites
from kep_hw.board.profiles import PLACERS, list_boards, load_board
from kep_hw.gateware.layouts import wt_columns
from kep_hw.gateware.params import parse_pes
from kep_hw.gateware.wtmem import weight_banks
from kep_hw.system.head import class_lanes
from kep_hw.system.plan import PARAM_WORD_BITS, WEIGHT_ELEM_BITS, NetworkPlan, plan_network

__all__ = ["estimate_resources", "largest_fitting_pes", "parse_nextpnr_log",
           "parse_nextpnr_report", "describe_path", "parse_yosys_stats", "parse_pes", "Progress",
           "NextpnrWatcher", "YosysWatcher", "run_tool", "main"]

log = logging.getLogger(__name__)

#: seconds of tool silence after which a "still running" progress line is printed
HEARTBEAT_S = 60.0

BRAM_BITS = 18432          # DP16KD
#: LUT4 (nextpnr's TRELLIS_COMB: LUT4s and carry cells) model,
#: ``LUT_BASE + LUT_PER_PE * P + LUT_PER_LANE * G + LUT_PER_RQ_LANE * L
#: + LUT_PER_LUT_MUL * lut_pes``, fitted (least squares, the requantization lanes' 600 held)
#: to the ResNet-20 builds of the engine with the plane fetcher (docs/boards.md, "Status"):
#: 85F P=128 as 16x8, G=16, L=8, operand registers, streamed: 44,177 (model 44,332); 85F P=64
#: as 16x4, G=8, L=8, operand registers: 28,457 embedded, 28,866 streamed (28,396); 12F P=16,
#: G=4, L=4, operand registers, streamed: 13,781 (14,044). Per PE: the operand mux and
#: register, the 32-bit accumulator, the shadow register and the PE's share of the window
#: fan-out; the base: the system around the engine (UART, frames, sequencer, buffers' ports,
#: head) and the engine's control. A separate term per lane of G fitted negative on these
#: builds (the window buffers grow with G x Px, the activation ports with G: no single lane
#: term), so the lanes' share sits in the others: 0. Per requantization lane (an estimate,
#: not fitted): its 8x24 logic product, adders and shifter
LUT_BASE = 7660
LUT_PER_PE = 249
LUT_PER_LANE = 0
LUT_PER_RQ_LANE = 600
#: LUT4s of one 8 x 8 multiplier built from logic (:mod:`kep_hw.gateware.mul`, ``"lut"``)
LUT_PER_LUT_MUL = 80
#: DSPs besides the one per PE: ``DSP_PER_LANE * L + DSP_BASE`` for the L requantization lanes
#: (two 16 x 16 products each), the head's first classifier lane and two address products,
#: plus the head's other classifier lanes (:func:`kep_hw.system.head.class_lanes`); the window
#: fetcher's buffer slot product went with its shift-register rows (shift fill)
DSP_PER_LANE = 2
DSP_BASE = 3
#: block RAMs of the head (its weight ROM; the sums and logits go to distributed RAM)
HEAD_BRAMS = 1


def _bram_blocks(width: int, depth: int) -> int:
    """DP16KD blocks of a ``width`` x ``depth`` memory, as Yosys maps it (``memory_libmap``
    with the ECP5's DP16KD / PDPW16KD): the fewest of the x18 / x9 / x4 / x2 / x1 shapes; the
    x36 shape only for a memory one block deep (512 words); and a memory of at most 12 bits
    also as ``36 // width`` words per x36 row. This reproduces every memory of the builds in
    ``docs/boards.md`` (e.g. a 36-bit weight column of 7,611 words: 16 blocks as 2 x 8 of the
    x18 shape, not 15 of the x36; a 12-bit one: 5, three words per row)."""
    best = None
    for w, d in ((18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)):
        n = math.ceil(width / w) * math.ceil(depth / d)
        best = n if best is None else min(best, n)
    if depth <= 512:
        best = min(best, math.ceil(width / 36))
    if 36 // width >= 2:
        best = min(best, math.ceil(depth / (512 * (36 // width))))
    return best


def estimate_resources(plan: NetworkPlan, *, streamed: bool, px: int = 1,
                       rq_lanes: int | None = None, lut_pes: int = 0) -> dict:
    """Estimated LUT4s, DSPs (MULT18X18D) and block RAMs (DP16KD) of a system.

    The LUT estimate is a linear fit (``LUT_BASE + LUT_PER_PE * P + LUT_PER_LANE * G +
    LUT_PER_RQ_LANE * L`` plus ``LUT_PER_LUT_MUL`` per PE whose multiplier is in logic); DSPs are one per PE with a DSP multiplier, two per
    requantization lane (``acc * mult`` as two 16 x 16 products; ``res * res_mult`` is built
    from logic) and ``DSP_BASE`` (the head's product and the configuration's address
    products); block RAMs follow the memories' widths and depths exactly: the activation
    buffers (the input buffer twice), weights, parameters, and the head's weight ROM and sums.
    ``plan.po`` is Po (output channels per group), the engine has ``P = Po * px`` PEs.
    """
    P, G = plan.po * px, plan.lanes
    L = G if rq_lanes is None else rq_lanes
    wt_depth = plan.max_layer_weight_words if streamed else plan.weight_words
    prm_depth = plan.max_layer_param_words if streamed else plan.param_words
    brams = sum(_bram_blocks(8 * G, d) for d in plan.buffer_words)
    brams += _bram_blocks(8 * G, plan.buffer_words[plan.input_buffer])   # double input buffer
    brams += sum(_bram_blocks(WEIGHT_ELEM_BITS * len(col), d)   # column memories' banks
                 for col in wt_columns(plan.po) for d in weight_banks(wt_depth))
    brams += _bram_blocks(PARAM_WORD_BITS, prm_depth)
    head_dsps = 0
    if plan.tail:
        brams += HEAD_BRAMS
        head_dsps = class_lanes(G) - 1     # the classifier's lanes beyond the first
    return {"luts": (LUT_BASE + LUT_PER_PE * P + LUT_PER_LANE * G + LUT_PER_RQ_LANE * L
                     + LUT_PER_LUT_MUL * lut_pes),
            "dsps": P - lut_pes + DSP_PER_LANE * L + DSP_BASE + head_dsps, "brams": brams}


def _overflow(est: dict, board) -> list:
    return [f"{k} {est[k]} > {getattr(board, k)}" for k in ("luts", "dsps", "brams")
            if est[k] > getattr(board, k)]


def largest_fitting_pes(kep, board, *, lanes: int, streamed: bool, limit: int = 256,
                        px: int = 1, rq_lanes: int | None = None, lut_pes: int = 0) -> int:
    """Largest P (a multiple of ``lanes * px``) whose estimate fits ``board``; 0 if none."""
    best = 0
    for pes in range(lanes * px, limit + 1, lanes * px):
        plan = plan_network(kep, po=pes // px, lanes=lanes)
        if not _overflow(estimate_resources(plan, streamed=streamed, px=px, rq_lanes=rq_lanes,
                                            lut_pes=min(lut_pes, pes)), board):
            best = pes
    return best


_UTIL = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at "
                   r"([\d.]+) MHz\)")
#: router2's line after each iteration of its main loop
_ROUTER2_ITER = re.compile(r"\biter=(\d+)\s+wires=\d+\s+overused=(\d+)")
#: the first line of nextpnr's routing (what comes before it is placement)
_ROUTING = re.compile(r"^Info: (Routing\.\.|Running router2|Routing globals)", re.M)


def parse_nextpnr_log(text: str) -> dict:
    """Utilisation and timing from a nextpnr-ecp5 log.

    Returns
    -------
    dict
        ``utilisation``: ``{cell: (used, available)}`` from the last "Device utilisation"
        table; ``clocks``: ``{clock: {"fmax_mhz", "target_mhz", "pass"}}`` from the last
        "Max frequency for clock" line of each clock (after routing); ``clocks_placed``: the
        same from the last such line before routing starts (nextpnr's estimate after
        placement; all lines when the log has no routing).
    """
    util = {}
    idx = text.rfind("Device utilisation")
    if idx >= 0:
        for cell, used, avail in _UTIL.findall(text[idx:idx + 4000]):
            util.setdefault(cell, (int(used), int(avail)))
    m = _ROUTING.search(text)
    parts = {"clocks": text, "clocks_placed": text[:m.start()] if m else text}
    out = {"utilisation": util}
    for key, part in parts.items():
        out[key] = {clk: {"fmax_mhz": float(fmax), "target_mhz": float(target),
                          "pass": verdict == "PASS"}
                    for clk, fmax, verdict, target in _FMAX.findall(part)}
    return out


def _endpoint(seg: dict, side: str) -> dict:
    end = seg.get(side) or {}
    return {"cell": str(end.get("cell", "?")), "port": str(end.get("port", "?"))}


def parse_nextpnr_report(report: dict, *, n: int = 5, segments: int = 3) -> list[dict]:
    """The worst critical paths of a nextpnr JSON report (``--report FILE``), worst first.

    nextpnr reports the worst path of each pair of clock edges: one per clock domain and one
    per cross-domain pair (``<async>`` for the I/O pins), each as a list of segments
    (``clk-to-q``, ``source``, ``logic``, ``routing``, ``setup``) with their delays.

    Parameters
    ----------
    report : dict
        The report as read from its JSON file (``critical_paths`` is used).
    n : int
        At most this many paths.
    segments : int
        The biggest segments kept per path.

    Returns
    -------
    list of dict
        Per path: ``from_clock``, ``to_clock`` (nextpnr's edge names, e.g.
        ``posedge $glbnet$clk``); ``from`` and ``to`` (``{"cell", "port"}`` of the first and
        last segment); ``total_ns``, ``logic_ns`` (every segment but routing: clock to output,
        cells, setup), ``routing_ns``; ``logic_levels`` (the ``logic`` segments, cells the
        path goes through); ``segments``: the ``segments`` biggest as ``{"type", "delay_ns",
        "from", "to"}`` (``"net"`` too for routing), biggest first. Paths within one clock
        domain come first, then the cross-domain ones, each group by total delay.
    """
    paths = []
    for cp in report.get("critical_paths") or []:
        segs = [sg for sg in (cp.get("path") or []) if isinstance(sg, dict)]
        if not segs:
            continue
        delays = [float(sg.get("delay") or 0.0) for sg in segs]
        routing = sum(d for sg, d in zip(segs, delays) if sg.get("type") == "routing")
        biggest = sorted(zip(delays, range(len(segs))), key=lambda x: (-x[0], x[1]))[:segments]
        top = []
        for d, i in biggest:
            sg = segs[i]
            item = {"type": str(sg.get("type", "?")), "delay_ns": round(d, 3),
                    "from": _endpoint(sg, "from"), "to": _endpoint(sg, "to")}
            if "net" in sg:
                item["net"] = str(sg["net"])
            top.append(item)
        total = sum(delays)
        paths.append({
            "from_clock": str(cp.get("from", "?")), "to_clock": str(cp.get("to", "?")),
            "from": _endpoint(segs[0], "from"), "to": _endpoint(segs[-1], "to"),
            "total_ns": round(total, 3), "logic_ns": round(total - routing, 3),
            "routing_ns": round(routing, 3),
            "logic_levels": sum(1 for sg in segs if sg.get("type") == "logic"),
            "segments": top})
    paths.sort(key=lambda p: (p["from_clock"] != p["to_clock"], -p["total_ns"]))
    return paths[:n]


def longest_nets(report: dict, *, n: int = 10, depth: int = 4) -> dict:
    """The longest routed nets of a nextpnr JSON report (``--detailed-timing-report``): what
    the clock's critical path shows one of, all of them, so that a path of the same kind (a
    register's long route to its loads across the chip) is not hidden behind the worst one.

    Returns ``{"nets": [...], "parts": [...]}``: the ``n`` nets with the longest route to one
    of their loads, each as ``{"net", "driver", "fanout", "max_ns"}``, longest first; and the
    ``n`` parts of the design (:func:`kep_hw.board.congestion.design_part` of the net's name,
    cut after ``depth`` components) by their longest net, as ``{"part", "max_ns", "nets"}``
    (``nets``: how many of its nets take more than half the longest net's delay). Empty lists
    if the report has no net timings.
    """
    from kep_hw.board.congestion import design_part
    rows = []
    for net in report.get("detailed_net_timings") or []:
        if not isinstance(net, dict):
            continue
        ends = [e for e in (net.get("endpoints") or []) if isinstance(e, dict)]
        delays = [max(float(x) for x in e["delay"]) if isinstance(e.get("delay"), list)
                  else float(e.get("delay") or 0.0) for e in ends if e.get("delay") is not None]
        if delays:
            rows.append((max(delays), str(net.get("net", "?")), str(net.get("driver", "?")),
                         len(ends)))
    rows.sort(key=lambda r: (-r[0], r[1]))
    if not rows:
        return {"nets": [], "parts": []}
    half = rows[0][0] / 2
    parts: dict[str, list] = {}
    for d, name, _, _ in rows:
        part = parts.setdefault(design_part(name, depth), [d, 0])
        part[1] += d > half
    return {
        "nets": [{"net": name, "driver": drv, "fanout": fo, "max_ns": round(d, 3)}
                 for d, name, drv, fo in rows[:n]],
        "parts": [{"part": k, "max_ns": round(v[0], 3), "nets": v[1]}
                  for k, v in sorted(parts.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]],
    }


def describe_path(path: dict) -> str:
    """One line of a :func:`parse_nextpnr_report` path: ``A.port -> B.port: 21.23 ns = 11.33
    logic + 9.90 routing, 7 logic levels`` (cross-domain paths name their clock edges)."""
    where = "" if path["from_clock"] == path["to_clock"] else \
        f" ({path['from_clock']} -> {path['to_clock']})"
    return (f"{path['from']['cell']}.{path['from']['port']} -> {path['to']['cell']}."
            f"{path['to']['port']}{where}: {path['total_ns']:.2f} ns = {path['logic_ns']:.2f} "
            f"logic + {path['routing_ns']:.2f} routing, {path['logic_levels']} logic levels")


def parse_yosys_stats(text: str) -> dict:
    """Cell counts of the last ``stat`` section of a Yosys log (``{cell type: count}``).

    Reads both layouts: Yosys 0.70's (``      9 cells`` then ``     12   CCU2C`` lines; the
    ``submodules`` count is left out) and the older one (``Number of cells: N`` then
    ``CCU2C  12`` lines).
    """
    idx = text.rfind("Number of cells")
    new = list(re.finditer(r"^\s+\d+ cells\s*$", text, re.M))
    if new and new[-1].start() > idx:
        cells = {}
        for line in text[new[-1].end():].splitlines()[1:]:
            m = re.match(r"^\s+(\d+)\s+(\$?[A-Za-z_][\w$]*)\s*$", line)
            if not m:
                break
            if m.group(2) != "submodules":
                cells[m.group(2)] = int(m.group(1))
        return cells
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


class Progress:
    """Progress lines with the elapsed time of a command, through this module's logger.

    ``info(msg)`` logs ``[  12.3 s] msg`` at INFO (hidden by ``--quiet``); :meth:`stage` logs
    a stage's start and its end with its own duration and keeps the durations in
    :attr:`seconds`.
    """

    def __init__(self, logger: logging.Logger = log):
        self.t0 = time.monotonic()
        self.log = logger
        self.seconds: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def info(self, msg: str) -> None:
        self.log.info("[%6.1f s] %s", self.elapsed(), msg)

    @contextlib.contextmanager
    def stage(self, name: str, what: str = ""):
        """``with progress.stage("synth (yosys)"):`` logs ``name: started`` (or ``name: what``)
        and, when the block ends without an exception, ``name: done in N s``."""
        t = time.monotonic()
        self.info(f"{name}: {what or 'started'}")
        yield
        self.seconds[name] = dt = time.monotonic() - t
        self.info(f"{name}: done in {dt:.1f} s")


class YosysWatcher:
    """Reads Yosys' log lines as they stream; remembers the pass that is running."""

    _PASS = re.compile(r"^(\d+(?:\.\d+)*)\.\s+Executing (.+?)\.?\s*$")

    def __init__(self):
        self.phase = "reading the design"

    def __call__(self, line: str) -> str | None:
        m = self._PASS.match(line)
        if m:
            self.phase = m.group(2).replace(" pass", "")
        return None


class NextpnrWatcher:
    """Reads nextpnr-ecp5's log lines as they stream; returns the notes worth a progress line.

    Notes: the device utilisation after packing, the start of placement and routing, and every
    ``Max frequency for clock`` line (the estimate after placement, the final fmax after
    routing); :attr:`phase` is what nextpnr is doing now, during routing with router2's
    iteration and overused wires (and the fewest so far: a count that stops falling is a
    routing that does not converge). With ``heatmaps`` (a folder of router2's
    ``--router2-heatmap`` files, :mod:`kep_hw.board.congestion`) the phase also names the most
    congested parts of the design at the last iteration.
    """

    def __init__(self, heatmaps: Path | None = None):
        self.phase = "reading the netlist"
        self._util: dict[str, tuple[int, int]] | None = None
        self.fmax: dict[str, dict] = {}
        self.routed = False
        self.heatmaps = heatmaps
        #: router2's iterations so far: [(iteration, overused wires)]
        self.iterations: list[tuple[int, int]] = []

    def __call__(self, line: str) -> str | None:
        notes = []
        if self._util is not None:                  # inside the utilisation table
            m = _UTIL.match(line)
            if m:
                self._util[m.group(1)] = (int(m.group(2)), int(m.group(3)))
                return None
            util, self._util = self._util, None
            cells = [(k, util[k]) for k in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD")
                     if k in util]
            if cells:
                notes.append("packed: " + ", ".join(f"{_CELL_NAMES[k]} {u}/{a}"
                                                    for k, (u, a) in cells))
        if "Device utilisation" in line:
            self._util = {}
        elif "Packing" in line and self.phase == "reading the netlist":
            self.phase = "packing"
        elif ("analytic placement" in line or "Running main analytical placer" in line
              or "Running Static placer" in line or "Starting placement" in line) \
                and self.phase != "placing":
            self.phase = "placing"
            notes.append("placing")
        elif "simulated annealing placer" in line and self.phase == "placing":
            self.phase = "refining the placement"
        elif _ROUTING.match(line) \
                and self.phase != "routing":
            self.phase = "routing"
            self.routed = True
            notes.append("routing")
        m = _ROUTER2_ITER.search(line)
        if m:
            it, over = int(m.group(1)), int(m.group(2))
            self.iterations.append((it, over))
            best = min(self.iterations, key=lambda t: (t[1], t[0]))
            self.phase = (f"routing: iteration {it}, {over:,} overused wires (fewest "
                          f"{best[1]:,} at iteration {best[0]})")
            if self.heatmaps is not None:
                from kep_hw.board.congestion import describe, summarize_folder
                try:
                    summ = summarize_folder(self.heatmaps, iteration=it - 1) if it > 1 else None
                except (KepError, OSError):
                    summ = None
                if summ:
                    self.phase += f"; {describe(summ)}"
        m = _FMAX.search(line)
        if m:
            clk, fmax, verdict, target = m.groups()
            self.fmax[clk] = {"fmax_mhz": float(fmax), "target_mhz": float(target),
                              "pass": verdict == "PASS"}
            when = "after routing" if self.routed else "after placement"
            notes.append(f"fmax {when}: {float(fmax):.2f} MHz for '{clk}' ({verdict} at "
                         f"{float(target):g} MHz)")
        return "; ".join(notes) or None


_CELL_NAMES = {"TRELLIS_COMB": "LUT4", "TRELLIS_FF": "FF", "MULT18X18D": "DSP",
               "DP16KD": "DP16KD", "LUT4": "LUT4", "CCU2C": "CCU2C"}


def run_tool(stage: str, argv: list[str], *, cwd: Path, progress: Progress,
             watcher=None, env: dict | None = None,
             heartbeat_s: float | None = None) -> tuple[int, list[str]]:
    """Run one tool, stream its output line by line and report progress as it happens.

    Every line goes to the DEBUG log of ``kep_hw.board.build.<tool>`` (``--verbose`` shows it);
    ``watcher(line)`` may return a note that becomes a progress line ``stage: note``; after
    ``heartbeat_s`` seconds without a note a ``stage: still running`` line names the watcher's
    ``phase``.

    Returns
    -------
    tuple
        The exit code and the last 200 lines of output.

    Raises
    ------
    KepError
        If the tool cannot be started.
    """
    heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    tool_log = logging.getLogger(f"{__name__}.{Path(argv[0]).name}")
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                errors="replace", bufsize=1)
    except OSError as e:
        raise KepError(f"{stage}: cannot run {argv[0]}: {e.strerror or e}") from None
    lines: queue.Queue = queue.Queue()

    def reader():
        for ln in proc.stdout:
            lines.put(ln)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    tail: collections.deque = collections.deque(maxlen=200)
    started = last = time.monotonic()
    try:
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                line = line.rstrip("\r\n")
                tail.append(line)
                if tool_log.isEnabledFor(logging.DEBUG):
                    tool_log.debug("%s", line)
                note = watcher(line) if watcher is not None else None
                if note:
                    progress.info(f"{stage}: {note}")
                    last = time.monotonic()
            # the heartbeat counts from the last note, whether the tool is silent or chatty
            now = time.monotonic()
            if now - last >= heartbeat_s:
                phase = getattr(watcher, "phase", None)
                progress.info(f"{stage}: still running after {now - started:.0f} s"
                              + (f" ({phase})" if phase else ""))
                last = now
        return proc.wait(), list(tail)
    finally:
        if proc.poll() is None:                     # interrupted: do not leave it running
            proc.kill()
            proc.wait()


def _error_line(tail: list[str]) -> str:
    """The most telling line of a failed tool's output: its last ``ERROR``, else its last."""
    errs = [ln.strip() for ln in tail if "ERROR" in ln]
    rest = [ln.strip() for ln in tail if ln.strip()]
    return errs[-1] if errs else (rest[-1] if rest else "no output")


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and one ``error: ...`` line on a bad option."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def _freq_arg(text: str):
    """``--freq``: a clock in MHz (float) or ``"auto"``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a clock in MHz or "
                                         f"'auto'") from None


#: nextpnr options the build sets itself (``--nextpnr-opt`` may not name them)
_OWN_NEXTPNR_OPTS = ("--seed", "--placer", "--router", "--freq", "--json", "--lpf",
                     "--textcfg", "--report", "--timing-allow-fail", "--router2-heatmap",
                     "--randomize-seed", "-r", "--package", "--speed", "--25k", "--45k",
                     "--85k", "--um-25k", "--um-45k", "--um-85k", "--um5g-25k", "--um5g-45k",
                     "--um5g-85k", "--12k", "--run", "--pre-pack", "--pre-place",
                     "--pre-route", "--post-route", "--write", "--sdf", "--log", "-l")


def _check_nextpnr_opt(opt: str) -> None:
    """One ``--nextpnr-opt``: a flag or ``--name=value`` of plain characters (it goes into
    the build's shell script), and none of the options the build sets itself."""
    if not re.fullmatch(r"--[a-z0-9][a-z0-9-]*(=[A-Za-z0-9._:+-]+)?", opt):
        raise KepError(f"--nextpnr-opt {opt!r}: give one nextpnr option as --name or "
                       f"--name=value (letters, digits, . _ : + - in the value)")
    if opt.split("=")[0] in _OWN_NEXTPNR_OPTS:
        raise KepError(f"--nextpnr-opt {opt!r}: the build sets {opt.split('=')[0]} itself "
                       f"(use the build's own option)")


def _seeds_arg(text: str) -> list[int]:
    """``--seeds``: comma-separated nextpnr seeds, each >= 0 and given once."""
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: comma-separated seeds, "
                                         f"e.g. 1,2,3") from None
    if any(x < 0 for x in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: seeds must be >= 0, each "
                                         f"given once")
    return seeds


#: ``--help``'s paragraph on ``--freq auto``
SEARCH_HELP = """\
--freq auto searches the fastest clock that meets timing: a first build at --freq-start
(default: the board's clock) reports nextpnr's fmax after routing; the next try asks the highest
clock at most that fmax which the board's PLL makes exactly and its UART accepts (at 3 Mbaud:
near a multiple of 3 MHz) - after a miss first the same clock with the next of --seeds, then a
lower one - for at most --max-tries builds, each in OUT/tries/<MHz>-s<seed>/. The fastest try
that met timing becomes OUT/kep_top.bit, report.json (its "clock_search" lists every try) and
summary.txt. Finished tries are kept in OUT/clock_search.json: the same command run again
skips them and goes on where it stopped."""


def _parser() -> argparse.ArgumentParser:
    from kep_hw.board.toolchain import PREFERENCES
    p = _Parser(prog="python -m kep_hw.build", description=__doc__.split("\n")[0],
                epilog=SEARCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--board", default="ulx3s",
                   help=f"board profile ({', '.join(list_boards())}; ulx3s = ulx3s-85f)")
    p.add_argument("--model", default=None, help=".kep model (default: small test network)")
    p.add_argument("--pes", default=None,
                   help="P, or PxPX: P PEs as PX output pixels x P/PX channels "
                        "(default: the board's)")
    p.add_argument("--lanes", type=int, default=None,
                   help="channels per activation word (default: the board's, else 4)")
    p.add_argument("--rq-lanes", type=int, default=None, metavar="L",
                   help="requantization lanes, outputs per cycle; divides --lanes (default: "
                        "the board's when it divides --lanes, else --lanes)")
    p.add_argument("--lut-pes", type=int, default=None, metavar="N",
                   help="PEs whose multiplier is built from logic instead of a DSP block "
                        "(default: the board's with its default --pes, else 0)")
    p.add_argument("--operand-reg", action=argparse.BooleanOptionalAction, default=None,
                   help="a register per PE between its operand multiplexer and its multiplier, "
                        "in logic beside the DSP block: one more MAC pipeline stage, for P "
                        "where the window-to-DSP routes limit the clock (default: the board's "
                        "with its default --pes, else off)")
    p.add_argument("--chain", action="store_true",
                   help="the engine's pixel groups in a chain: group q takes the weight word "
                        "from group q-1 one cycle later and runs q cycles behind group 0 "
                        "(no net carries the weight word to all groups; Px - 1 cycles per "
                        "layer end)")
    p.add_argument("--dist-reg", action="store_true",
                   help="two more register levels for the weight word, the window and the MAC "
                        "flags before they leave for the pixel groups, the second in one copy "
                        "per 4 groups, so their route to the PEs has no logic on it (two more "
                        "MAC pipeline stages; needs PX > 1, not with --chain)")
    p.add_argument("--floorplan", choices=FLOORPLANS, default="none",
                   help="groups: each pixel group's multipliers on adjacent DSP sites of one "
                        "row, groups in a snake over the rows (nextpnr places the rest around "
                        "them; devices with a known site list: "
                        + ", ".join(DSP_ROWS) + "); none: nextpnr chooses every site "
                        "(default none)")
    p.add_argument("--freq", type=_freq_arg, default=None,
                   help=f"core clock MHz, {MIN_MHZ:g}-{MAX_MHZ:g} (default: the board's), or "
                        f"auto: search the fastest clock that meets timing (below)")
    p.add_argument("--freq-start", type=float, default=None,
                   help="--freq auto: the first try's clock (default: the board's)")
    p.add_argument("--seeds", type=_seeds_arg, default=None,
                   help="--freq auto: nextpnr seeds to try at a clock that missed, e.g. 1,2,3 "
                        "(default: --seed)")
    p.add_argument("--max-tries", type=int, default=None,
                   help=f"--freq auto: at most this many builds (default {DEFAULT_MAX_TRIES})")
    p.add_argument("--weights", choices=("auto", "embedded", "stream"), default="auto",
                   help="embed all weights, stream them per layer, or choose by fit (auto)")
    p.add_argument("--out", default="build/kep", help="output folder (default build/kep)")
    p.add_argument("--baud", type=int, default=None, help="UART baud rate (board default)")
    p.add_argument("--seed", type=int, default=None,
                   help="nextpnr placement seed (>= 0; default: the board profile's, the seed "
                        "its default clock was measured with, else 1)")
    p.add_argument("--placer", choices=PLACERS, default=None,
                   help="nextpnr placer: static (electrostatic: spreads the design over the "
                        "chip, where heap left the 85F's router stalled; docs/boards.md) or "
                        "heap (analytic: packs the design around its I/O) (default: the "
                        "board's)")
    p.add_argument("--router", choices=("router2", "router1"), default="router2",
                   help="nextpnr router (router2 default: router1 did not converge on the 85F "
                        "with 64 PEs)")
    p.add_argument("--congestion", action="store_true",
                   help="router2 writes a congestion heatmap after every iteration (OUT/build/"
                        "congestion/); the progress and report.json name the most congested "
                        "parts of the design; read a stopped build with python -m "
                        "kep_hw.board.congestion OUT/build")
    p.add_argument("--nextpnr-opt", action="append", default=[], metavar="OPT",
                   help="one more nextpnr-ecp5 option, e.g. --nextpnr-opt=--router2-alt-weights "
                        "or --nextpnr-opt=--tmg-ripup (repeatable; a flag or --name=value; "
                        "not one the build sets itself: seed, placer, router, clock, files); "
                        "recorded in report.json and part of the clock search's design key")
    p.add_argument("--abc9", action="store_true",
                   help="map LUTs with Yosys' abc9 (synth_ecp5's own flow); by default "
                        "classic abc, because Yosys 0.70's abc9 aborts on the kep engine")
    p.add_argument("--toolchain", choices=PREFERENCES, default="auto",
                   help="where the tools come from: native on PATH first, else YoWASP (auto), "
                        "native only, or YoWASP only; YOSYS, NEXTPNR_ECP5, ECPPACK, "
                        "OPENFPGALOADER set by the user always win")
    p.add_argument("--program", action="store_true", help="load the bitstream with openFPGALoader")
    p.add_argument("--dry-run", action="store_true",
                   help="elaborate and write the tool inputs without running the tools (with "
                        "--freq auto: those of the first try)")
    add_logging_args(p)
    return p


#: the core clock range ``--freq`` accepts (MHz)
MIN_MHZ, MAX_MHZ = 10.0, 200.0
#: ``--max-tries`` without the option
DEFAULT_MAX_TRIES = 5
#: the critical paths kept in ``report.json`` (``worst_paths``)
WORST_PATHS = 5
#: the design's name: ``kep_top.bit``, ``kep_top.tim`` (nextpnr's log), ...
NAME = "kep_top"


def _check_args(args, board) -> tuple[int, int, float, int]:
    """Validated ``(pes, px, freq, baud)``; a bad value is one :class:`KepError`.

    ``freq`` is ``--freq``, or with ``--freq auto`` the first try's clock (``--freq-start``);
    ``args.seed``, ``args.seeds`` and ``args.max_tries`` get their defaults.
    """
    pes, px = parse_pes(args.pes) if args.pes is not None else (board.default_pes,
                                                                board.default_px)
    if args.lanes is None:
        args.lanes = board.default_lanes
    if args.lanes < 1 or args.lanes & (args.lanes - 1):
        raise KepError(f"--lanes must be a power of two, got {args.lanes}")
    if args.rq_lanes is None:
        args.rq_lanes = board.rq_lanes_for(args.lanes)
    if args.rq_lanes < 1 or args.lanes % args.rq_lanes:
        raise KepError(f"--rq-lanes must divide --lanes {args.lanes}, got {args.rq_lanes}")
    if args.lut_pes is None:
        args.lut_pes = board.default_lut_pes if args.pes is None else 0
    if args.operand_reg is None:
        args.operand_reg = board.default_operand_reg if args.pes is None else False
    if pes > 255 or (pes // px) % args.lanes:
        raise KepError(f"--pes: P/PX must be a multiple of --lanes {args.lanes} and P at most "
                       f"255, got {pes}x{px}")
    if args.dist_reg and (px == 1 or args.chain):
        raise KepError("--dist-reg feeds the pixel groups from one register each: it needs "
                       "PX > 1 (--pes PxPX) and no --chain")
    if args.placer is None:
        args.placer = board.placer
    if args.congestion and args.router != "router2":
        raise KepError("--congestion reads router2's heatmaps: use it with --router router2")
    for opt in args.nextpnr_opt:
        _check_nextpnr_opt(opt)
    auto = args.freq == "auto"
    if not auto:
        for opt, value in (("--freq-start", args.freq_start), ("--seeds", args.seeds),
                           ("--max-tries", args.max_tries)):
            if value is not None:
                raise KepError(f"{opt} belongs to the clock search: give --freq auto too")
    elif args.seeds is not None and args.seed is not None:
        raise KepError("--seed and --seeds: give one of them (--seeds with --freq auto)")
    opt, freq = ("--freq-start", args.freq_start) if auto else ("--freq", args.freq)
    freq = board.default_mhz if freq is None else freq
    if not (math.isfinite(freq) and MIN_MHZ <= freq <= MAX_MHZ):
        raise KepError(f"{opt} must be a clock in [{MIN_MHZ:g}, {MAX_MHZ:g}] MHz, got {freq:g}")
    baud = board.baud if args.baud is None else args.baud
    if baud <= 0:
        raise KepError(f"--baud must be a positive rate, got {baud}")
    _clock_setting(board, freq, baud)
    if args.seed is None:
        args.seed = board.default_seed
    if args.seed < 0:
        raise KepError(f"--seed must be >= 0, got {args.seed}")
    if auto:
        args.seeds = args.seeds or [args.seed]
        args.max_tries = DEFAULT_MAX_TRIES if args.max_tries is None else args.max_tries
        if args.max_tries < 1:
            raise KepError(f"--max-tries must be at least 1, got {args.max_tries}")
    return pes, px, freq, baud


def _load_network(model):
    if model is None:
        from kep_hw.testing import random_network
        return random_network(0)
    from kep_train.export.kepfile import load_kep
    return load_kep(model)


def _find_tools(prefer: str, *, need_programmer: bool, dry_run: bool) -> dict:
    """The toolchain (``{tool: (path, kind)}``); a dry run lists a missing tool as missing."""
    from kep_hw.board.toolchain import TOOLS, find_tool, find_toolchain
    if not dry_run:
        return find_toolchain(need_programmer=need_programmer, prefer=prefer)
    found = {}
    for key in TOOLS:
        try:
            found[key] = find_tool(key, prefer=prefer)
        except KepError as e:
            if key != "openFPGALoader" or need_programmer:
                log.warning("%s (a dry run goes on without it)", e)
    return found


def _tool_commands(build_dir: Path, name: str, found: dict) -> list[tuple[str, list[str]]]:
    """``(stage, argv)`` of the build plan's commands (``build_<name>.json``), each tool
    replaced by the path :func:`kep_hw.board.toolchain.find_toolchain` found."""
    stages = {"yosys": "synth (yosys)", "nextpnr-ecp5": "place and route (nextpnr-ecp5)",
              "ecppack": "pack (ecppack)"}
    plan = json.loads((build_dir / f"build_{name}.json").read_text())
    out = []
    for argv in plan["commands"]:
        tool = argv[0]
        if tool not in found:
            raise KepError(f"the build needs {tool}, which was not found")
        out.append((stages.get(tool, tool), [found[tool][0], *argv[1:]]))
    return out


def _run_tools(commands, *, build_dir: Path, env: dict, progress: Progress, fail,
               heatmaps: Path | None = None) -> None:
    """Run the synth, place and route and pack commands with progress; ``fail(msg)`` raises.
    ``heatmaps``: router2's heatmap folder (``--congestion``) for the routing progress."""
    for stage, argv in commands:
        watcher = (YosysWatcher() if stage.startswith("synth") else
                   NextpnrWatcher(heatmaps) if stage.startswith("place") else None)
        with progress.stage(stage):
            rc, tail = run_tool(stage, argv, cwd=build_dir, progress=progress,
                                watcher=watcher, env=env)
            if rc != 0:
                fail(f"{stage} failed (exit code {rc}): {_error_line(tail)}")
            if stage.startswith("synth"):
                rpt = build_dir / f"{Path(argv[-1]).stem}.rpt"
                cells = parse_yosys_stats(rpt.read_text()) if rpt.exists() else {}
                shown = [f"{_CELL_NAMES[k]} {cells[k]}" for k in
                         ("LUT4", "CCU2C", "TRELLIS_FF", "MULT18X18D", "DP16KD") if k in cells]
                if shown:
                    progress.info(f"{stage}: cells " + ", ".join(shown))


#: nextpnr's JSON report with the critical paths (and, where accepted, the net timings)
REPORT_OPTS = ("--report", "--detailed-timing-report")


@functools.lru_cache(maxsize=8)
def _nextpnr_report_opts(nextpnr: str) -> tuple[str, ...]:
    """The options of :data:`REPORT_OPTS` that this nextpnr's ``--help`` lists."""
    try:
        res = subprocess.run([nextpnr, "--help"], capture_output=True, text=True,
                             errors="replace", stdin=subprocess.DEVNULL, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return ()
    text = res.stdout + res.stderr
    return tuple(opt for opt in REPORT_OPTS if re.search(rf"{re.escape(opt)}\b", text))


def _pe_sites(board, px: int, po: int, args) -> list[str] | None:
    """:func:`kep_hw.board.floorplan.pe_sites` of the build (the PEs with a DSP multiplier)."""
    return pe_sites(board.device, px, po, px * po - args.lut_pes, args.floorplan)


@dataclasses.dataclass
class _Setup:
    """What every build of one command shares: the options, board, network plan and tools."""
    args: argparse.Namespace
    board: object
    pes: int
    px: int
    baud: int
    kep: object
    plan: NetworkPlan
    streamed: bool
    est: dict
    found: dict
    tool_env: dict

    @property
    def po(self) -> int:
        return self.pes // self.px

    @property
    def wmode(self) -> str:
        return "streamed" if self.streamed else "embedded"

    @property
    def engine_text(self) -> str:
        """``P=.. (.. channels x .. pixels)``, the logic multipliers and operand registers."""
        a = self.args
        return (f"P={self.pes} ({self.po} channels x {self.px} pixels)"
                + (f", {a.lut_pes} logic multipliers" if a.lut_pes else "")
                + (", operand registers" if a.operand_reg else "")
                + (", pixel-group chain" if a.chain else "")
                + (", distribution register" if a.dist_reg else "")
                + (f", {a.floorplan} floorplan" if self.pe_sites else ""))

    @functools.cached_property
    def pe_sites(self) -> list[str] | None:
        """The DSP site of each PE (``--floorplan``), or None: nextpnr chooses."""
        return _pe_sites(self.board, self.px, self.po, self.args)

    @functools.cached_property
    def tools_id(self) -> dict:
        """The tools' paths, kinds and versions (part of a clock search try's design key)."""
        from kep_hw.board.toolchain import tool_versions
        return tool_versions(self.found)

    def largest_pes(self) -> int:
        return largest_fitting_pes(self.kep, self.board, lanes=self.args.lanes,
                                   rq_lanes=self.args.rq_lanes, lut_pes=self.args.lut_pes,
                                   streamed=self.streamed, px=self.px)


def _clock_setting(board, freq: float, baud: int) -> tuple[dict, int]:
    """The PLL setting for ``freq`` and the UART divisor at ``baud``; one :class:`KepError`
    if the PLL cannot make the clock or the UART's rate would be too far off."""
    from kep_hw.board.pll import ecp5_pll_params
    from kep_hw.gateware.uart import uart_divisor
    try:
        pll = ecp5_pll_params(board.clk_mhz, freq)
        return pll, uart_divisor(pll["fout"] * 1e6, baud)
    except ValueError as e:
        raise KepError(str(e)) from None


def _elaborate(s: _Setup, freq: float, seed: int, build_dir: Path, progress: Progress):
    """Elaborate the system at ``freq`` and write the tool inputs into ``build_dir``.

    Returns ``(pll, divisor, plan)``: the PLL setting, the UART divisor and Amaranth's build
    plan (its ``files`` are the tool inputs)."""
    from kep_hw.board.top import BoardTop
    from kep_hw.system.top import KepSystem
    board = s.board
    pll, divisor = _clock_setting(board, freq, s.baud)
    if pll["err"] > 1e-6 * freq:
        log.warning("the PLL makes %.4f MHz of the %g MHz asked for (%g MHz oscillator)",
                    pll["fout"], freq, board.clk_mhz)
    nextpnr = s.found.get("nextpnr-ecp5")
    report_opts = _nextpnr_report_opts(nextpnr[0]) if nextpnr else ()
    pnr_opts = [f"--timing-allow-fail --seed {seed} --placer {s.args.placer} "
                f"--router {s.args.router}", *s.args.nextpnr_opt]
    if s.args.congestion:
        from kep_hw.board.congestion import HEATMAP_DIR, HEATMAP_PREFIX
        pnr_opts.append(f"--router2-heatmap {HEATMAP_DIR}/{HEATMAP_PREFIX}")
    if "--report" in report_opts:
        pnr_opts += [f"--report {NAME}.report.json"] + \
            [o for o in report_opts if o != "--report"]
    with progress.stage("elaborate", f"{board.name}, {s.engine_text}, {s.wmode} weights, "
                                     f"{len(s.plan.layers)} layers, "
                                     f"PLL {board.clk_mhz:g} -> {pll['fout']:.3f} MHz"):
        system = KepSystem(s.plan, streamed=s.streamed, divisor=divisor,
                           clk_hz=pll["fout"] * 1e6, byte_timeout=int(pll["fout"] * 1e6 * 0.05),
                           px=s.px, rq_lanes=s.args.rq_lanes, lut_pes=s.args.lut_pes,
                           operand_reg=s.args.operand_reg, chain=s.args.chain,
                           dist_reg=s.args.dist_reg, pe_sites=s.pe_sites)
        top = BoardTop(system, board, freq)
        platform = board.make_platform()
        # verbose: the tools print their whole log, which is streamed and parsed as it comes
        overrides = {"nextpnr_opts": " ".join(pnr_opts), "verbose": True}
        if not s.args.abc9:
            # synth_ecp5 up to its LUT mapping, classic ABC for the LUTs, then the rest of it
            overrides["synth_opts"] = "-run :map_luts"
            overrides["script_after_synth"] = "\n".join([
                "techmap -map +/lattice/latches_map.v", "abc -lut 4", "clean",
                f"synth_ecp5 -top {NAME} -run map_cells:"])
        products = platform.build(top, name=NAME, build_dir=build_dir, do_build=False,
                                  **overrides)
        products.extract(build_dir)
    return pll, divisor, products


def _worst_paths(path: Path) -> tuple[list[dict], dict]:
    """:func:`parse_nextpnr_report` and :func:`longest_nets` of nextpnr's JSON report; empty
    (with a warning when the file is there but unreadable) if there is none."""
    if not path.exists():
        return [], {"nets": [], "parts": []}
    try:
        report = json.loads(path.read_text())
        return parse_nextpnr_report(report, n=WORST_PATHS), longest_nets(report)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:
        log.warning("cannot read nextpnr's report %s (%s)", path, e)
        return [], {"nets": [], "parts": []}


def _run_build(s: _Setup, build_dir: Path, progress: Progress) -> dict:
    """Synthesis, place and route and packing in ``build_dir``; what their logs say.

    Returns ``{"utilisation", "clocks", "clocks_placed", "yosys_cells", "worst_paths"}``
    (:func:`parse_nextpnr_log`, :func:`parse_yosys_stats`, :func:`parse_nextpnr_report`)."""
    for ext in (".bit", ".tim", ".rpt", ".report.json"):
        (build_dir / f"{NAME}{ext}").unlink(missing_ok=True)   # no stale result of an earlier run
    heatmaps = None
    if s.args.congestion:
        from kep_hw.board.congestion import HEATMAP_DIR
        heatmaps = build_dir / HEATMAP_DIR
        if heatmaps.exists():
            shutil.rmtree(heatmaps)
        heatmaps.mkdir(parents=True)
    commands = _tool_commands(build_dir, NAME, s.found)

    def fail(msg):
        more = (f"; where routing was congested: python -m kep_hw.board.congestion "
                f"{build_dir}" if heatmaps is not None and any(heatmaps.iterdir()) else "")
        raise KepError(f"{msg}; logs in {build_dir}; largest --pes that fits by the "
                       f"estimate: {s.largest_pes()}{more}")

    _run_tools(commands, build_dir=build_dir, env=s.tool_env, progress=progress, fail=fail,
               heatmaps=heatmaps)
    parsed = parse_nextpnr_log((build_dir / f"{NAME}.tim").read_text())
    parsed["yosys_cells"] = parse_yosys_stats((build_dir / f"{NAME}.rpt").read_text())
    parsed["worst_paths"], parsed["longest_nets"] = _worst_paths(
        build_dir / f"{NAME}.report.json")
    if parsed["worst_paths"]:
        progress.info(f"worst path: {describe_path(parsed['worst_paths'][0])}")
    if heatmaps is not None:
        from kep_hw.board.congestion import summarize_folder
        parsed["congestion"] = summarize_folder(heatmaps)
    return parsed


def _core_fmax(clocks: dict) -> tuple[float | None, bool | None]:
    """``(fmax, met)`` of the core clock (the PLL's output; all clocks if none is named so)."""
    core = {k: v for k, v in clocks.items() if "clkop" in k.lower() or "sync" in k.lower()}
    core = core or clocks
    fmax = min((c["fmax_mhz"] for c in core.values()), default=None)
    met = all(c["pass"] for c in core.values()) if core else None
    return fmax, met


def _report(s: _Setup, freq: float, seed: int, pll: dict, divisor: int, results: dict | None,
            seconds: float, stage_seconds: dict) -> tuple[dict, list[str]]:
    """``report.json``'s contents and ``summary.txt``'s lines of one build (``results`` of
    :func:`_run_build`, ``None`` for a dry run)."""
    args, board = s.args, s.board
    results = results or {}
    util = results.get("utilisation", {})
    clocks = results.get("clocks", {})
    fmax, met = _core_fmax(clocks)
    fmax_placed, _ = _core_fmax(results.get("clocks_placed", {}))
    status = "built" if results else "dry-run"

    def used(cell):
        return {"used": util[cell][0], "available": util[cell][1]} if cell in util else None

    report = {
        "board": board.name, "device": board.device, "status": status, "pes": s.pes,
        "px": s.px, "po": s.po,
        "lanes": args.lanes, "rq_lanes": args.rq_lanes, "lut_pes": args.lut_pes,
        "operand_reg": args.operand_reg, "chain": args.chain, "dist_reg": args.dist_reg,
        "floorplan": args.floorplan,
        "weights": s.wmode,
        "abc9": args.abc9,
        "model": str(args.model) if args.model else "built-in test network",
        "layers": len(s.plan.layers), "uart_baud": s.baud, "uart_divisor": divisor,
        "freq_requested_mhz": freq, "freq_pll_mhz": pll["fout"],
        "pll": {k: pll[k] for k in ("refdiv", "fbdiv", "opdiv", "fvco")},
        "seed": seed, "placer": args.placer, "router": args.router,
        "nextpnr_opts": list(args.nextpnr_opt),
        "fmax_mhz": fmax, "fmax_placed_mhz": fmax_placed, "timing_met": met, "clocks": clocks,
        "worst_paths": results.get("worst_paths", []),
        "longest_nets": results.get("longest_nets", {"nets": [], "parts": []}),
        "congestion": results.get("congestion"),
        "utilisation": {"luts": used("TRELLIS_COMB"), "ffs": used("TRELLIS_FF"),
                        "dsps": used("MULT18X18D"), "brams": used("DP16KD")},
        "estimate": s.est, "budget": {"luts": board.luts, "dsps": board.dsps,
                                      "brams": board.brams},
        "yosys_cells": results.get("yosys_cells", {}), "toolchain": args.toolchain,
        "tools": s.tools_id,
        "stage_seconds": dict(stage_seconds),
        "seconds": seconds, "environment": environment_info(),
    }
    lines = [f"{board.name} ({board.device}), {s.engine_text}, {s.wmode} weights, "
             f"{len(s.plan.layers)} layers, {status}"]
    for k, v in report["utilisation"].items():
        if v:
            lines.append(f"  {k:6s} {v['used']:6d} / {v['available']:6d}")
    if fmax is not None:
        lines.append(f"  clock  requested {freq:g} MHz (PLL {pll['fout']:.3f}), fmax "
                     f"{fmax:.2f} MHz, timing {'met' if met else 'MISSED'}")
    if report["worst_paths"]:
        lines.append(f"  worst  {describe_path(report['worst_paths'][0])}")
    for part in report["longest_nets"]["parts"][:3]:
        lines.append(f"  nets   {part['part']}: longest {part['max_ns']:.2f} ns, "
                     f"{part['nets']} nets over half the longest")
    lines.append(f"  UART   {s.baud} baud (divisor {divisor}); {seconds:.0f} s")
    return report, lines


def _write_result(folder: Path, report: dict, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "report.json", report)
    atomic_write_bytes(folder / "summary.txt", ("\n".join(lines) + "\n").encode())


def _single_build(s: _Setup, freq: float, out: Path, progress: Progress) -> None:
    """One build at ``freq`` (``--freq N``, or a dry run) into ``out``."""
    build_dir = out / "build"
    pll, divisor, _ = _elaborate(s, freq, s.args.seed, build_dir, progress)
    if s.args.dry_run:
        progress.info(f"dry run: synth, place and route and pack skipped; tool inputs and "
                      f"build_{NAME}.sh in {build_dir}")
        results = None
    else:
        results = _run_build(s, build_dir, progress)
        shutil.copyfile(build_dir / f"{NAME}.bit", out / f"{NAME}.bit")
    report, lines = _report(s, freq, s.args.seed, pll, divisor, results, progress.elapsed(),
                            progress.seconds)
    _write_result(out, report, lines)
    print("\n".join(lines))
    if report["status"] == "built" and report["timing_met"] is False:
        raise KepError(f"timing missed: fmax {report['fmax_mhz']:.2f} MHz < {pll['fout']:.2f} "
                       f"MHz requested; try a lower --freq (or --freq auto) or --pes (largest "
                       f"fitting by estimate: {s.largest_pes()})")


def _search_try(s: _Setup, freq: float, seed: int, n: int, out: Path, store: TryStore,
                progress: Progress) -> tuple[dict, dict, list[str]]:
    """Try ``n`` of a clock search: build at ``freq`` with ``seed`` in
    ``out/tries/<MHz>-s<seed>/``, or take the recorded result of an identical finished try.

    Returns the try's record (``clock_search`` entry), its report and its summary lines."""
    folder = out / "tries" / try_folder_name(freq, seed)
    build_dir = folder / "build"
    progress.info(f"clock search: try {n} of at most {s.args.max_tries}: {freq:.3f} MHz, seed "
                  f"{seed}, in {folder}")
    progress.seconds = {}
    t0 = time.monotonic()
    pll, divisor, products = _elaborate(s, freq, seed, build_dir, progress)
    key = design_key(products.files, freq_mhz=pll["fout"], seed=seed, tools=s.tools_id)
    rec = store.get(key)
    kept = [folder / "report.json", folder / "summary.txt"]
    if rec is not None and rec.get("timing_met"):
        kept.append(folder / f"{NAME}.bit")     # the result may be this try's bitstream
    if rec is not None and all(f.exists() for f in kept):
        progress.info(f"clock search: try {n} was done before ({_try_result(rec)}); skipped")
        report = json.loads((folder / "report.json").read_text())
        lines = (folder / "summary.txt").read_text().splitlines()
        return dict(rec, resumed=True), report, lines
    results = _run_build(s, build_dir, progress)
    shutil.copyfile(build_dir / f"{NAME}.bit", folder / f"{NAME}.bit")
    seconds = time.monotonic() - t0
    report, lines = _report(s, freq, seed, pll, divisor, results, seconds, progress.seconds)
    _write_result(folder, report, lines)
    rec = {"freq_requested_mhz": freq, "freq_pll_mhz": pll["fout"], "seed": seed,
           "fmax_placed_mhz": report["fmax_placed_mhz"], "fmax_mhz": report["fmax_mhz"],
           "timing_met": report["timing_met"], "seconds": round(seconds, 1),
           "folder": folder.relative_to(out).as_posix(), "key": key}
    store.put(key, rec)
    progress.info(f"clock search: try {n}: {_try_result(rec)}")
    return dict(rec, resumed=False), report, lines


def _fmt_mhz(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _try_result(rec: dict) -> str:
    verdict = "met" if rec["timing_met"] else "MISSED"
    return (f"{rec['freq_pll_mhz']:.3f} MHz seed {rec['seed']}: fmax {_fmt_mhz(rec['fmax_mhz'])} "
            f"MHz after routing ({_fmt_mhz(rec['fmax_placed_mhz'])} after placement), timing "
            f"{verdict}, {rec['seconds']:.0f} s")


def _clock_search(s: _Setup, start: float, out: Path, progress: Progress) -> None:
    """``--freq auto``: the tries of :func:`next_clock` from ``start`` until it has none or
    ``--max-tries`` are done; the fastest try that met timing is the result in ``out``."""
    args = s.args
    t0 = time.monotonic()
    store = TryStore(out / STORE_NAME)
    tries, results = [], []
    freq, seed = start, args.seeds[0]
    while True:
        rec, report, lines = _search_try(s, freq, seed, len(tries) + 1, out, store, progress)
        tries.append(rec)
        results.append((report, lines))
        if len(tries) >= args.max_tries:
            stopped = f"--max-tries {args.max_tries} reached"
            break
        nxt = next_clock(s.board, s.baud, tries, seeds=args.seeds, lo=MIN_MHZ, hi=MAX_MHZ)
        if nxt is None:
            stopped = ("no faster clock to try" if any(t["timing_met"] for t in tries) else
                       "no lower clock to try")
            break
        how = ("the same clock, next seed" if abs(nxt[0] - rec["freq_pll_mhz"]) < 1e-6 else
               "up" if nxt[0] > rec["freq_pll_mhz"] else "down")
        progress.info(f"clock search: next {nxt[0]:.3f} MHz, seed {nxt[1]} ({how})")
        freq, seed = nxt
    met = [i for i, t in enumerate(tries) if t["timing_met"]]
    best = max(met, key=lambda i: tries[i]["freq_pll_mhz"]) if met else len(tries) - 1
    search = {"start_mhz": start, "seeds": list(args.seeds), "max_tries": args.max_tries,
              "tries": tries, "chosen": tries[best]["folder"] if met else None,
              "stopped": stopped, "seconds": round(time.monotonic() - t0, 1),
              "tries_seconds": round(sum(t["seconds"] for t in tries), 1)}
    report, lines = results[best]
    report = dict(report, clock_search=search)
    resumed = sum(t["resumed"] for t in tries)
    lines = lines + [f"  search {len(tries)} tries ({resumed} done before) in "
                     f"{search['seconds']:.0f} s ({search['tries_seconds']:.0f} s of builds); "
                     f"{stopped}; result: {search['chosen'] or 'none met timing'}"]
    lines += [f"    {t['folder']:16s} {_try_result(t)}" for t in tries]
    bit = out / f"{NAME}.bit"
    if met:
        shutil.copyfile(out / tries[best]["folder"] / f"{NAME}.bit", bit)
    else:
        bit.unlink(missing_ok=True)         # no bitstream of an earlier run posing as this one
    _write_result(out, report, lines)
    print("\n".join(lines))
    if not met:
        top = max(tries, key=lambda t: t["fmax_mhz"] or 0.0)
        raise KepError(f"timing missed in all {len(tries)} tries of the clock search (best: "
                       f"fmax {_fmt_mhz(top['fmax_mhz'])} MHz at {top['freq_pll_mhz']:.3f} MHz); "
                       f"try a lower --freq-start, more --max-tries or --seeds, or a smaller "
                       f"--pes (largest fitting by estimate: {s.largest_pes()})")


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    args = _parser().parse_args(argv)
    setup_logging(verbosity(args))
    progress = Progress()
    board = load_board(args.board)
    pes, px, freq, baud = _check_args(args, board)
    po = pes // px
    kep = _load_network(args.model)
    plan = plan_network(kep, po=po, lanes=args.lanes)
    if args.weights == "auto":
        streamed = bool(_overflow(estimate_resources(plan, streamed=False, px=px,
                                                     rq_lanes=args.rq_lanes,
                                                     lut_pes=args.lut_pes), board))
    else:
        streamed = args.weights == "stream"
    est = estimate_resources(plan, streamed=streamed, px=px, rq_lanes=args.rq_lanes,
                             lut_pes=args.lut_pes)
    over = _overflow(est, board)
    if over:
        best = largest_fitting_pes(kep, board, lanes=args.lanes, streamed=streamed,
                                   px=px, rq_lanes=args.rq_lanes, lut_pes=args.lut_pes)
        raise KepError(f"does not fit {board.name} ({'streamed' if streamed else 'embedded'} "
                       f"weights, P={pes}): estimated {', '.join(over)}; largest --pes that "
                       f"fits: {best or 'none'}")

    if args.floorplan != "none" and _pe_sites(board, px, pes // px, args) is None:
        raise KepError(f"--floorplan {args.floorplan}: "
                       + (f"{px} pixel groups of {pes // px} do not fit whole into the DSP rows "
                          f"of {board.device}" if board.device in DSP_ROWS else
                          f"no DSP site list for {board.device} (known: {', '.join(DSP_ROWS)})"))

    from kep_hw.board.toolchain import configure_amaranth
    found = _find_tools(args.toolchain, need_programmer=args.program, dry_run=args.dry_run)
    # the tools' variables for the build plan's script, never written into our own environment
    tool_env = dict(os.environ)
    configure_amaranth(found, tool_env)
    s = _Setup(args=args, board=board, pes=pes, px=px, baud=baud, kep=kep, plan=plan,
               streamed=streamed, est=est, found=found, tool_env=tool_env)
    out = Path(args.out)
    if args.freq == "auto" and not args.dry_run:
        _clock_search(s, freq, out, progress)
    else:
        if args.freq == "auto":
            args.seed = args.seeds[0]
            progress.info(f"dry run of --freq auto: the tool inputs of its first try "
                          f"({freq:g} MHz, seed {args.seed})")
        _single_build(s, freq, out, progress)
    if args.program:
        cmd = [found["openFPGALoader"][0], *board.program, str(out / f"{NAME}.bit")]
        with progress.stage("program (openFPGALoader)"):
            rc, tail = run_tool("program (openFPGALoader)", cmd, cwd=out, progress=progress,
                                env=tool_env)
            if rc != 0:
                raise KepError(f"programming failed (exit code {rc}): {_error_line(tail)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
