# SPDX-License-Identifier: Apache-2.0
"""Build a bitstream of the KEP system for a board with open tools (Yosys, nextpnr, ecppack).

``python -m kep_hw.build --board ulx3s --model model.kep [--pes N] [--freq MHZ] [--out DIR]
[--weights auto|embedded|stream] [--toolchain auto|native|yowasp] [--program] [--dry-run]
[--quiet | --verbose]``

Writes to ``--out``: the bitstream ``kep_top.bit``, ``report.json`` (utilisation used and
available, requested and achieved fmax, timing met, P, board, weight mode, tool paths, kinds and
versions, seconds per stage), ``summary.txt`` and the build folder with all tool inputs and
logs. Before running the tools, a resource estimate checks the board's budget; a design that
does not fit (by the estimate or by nextpnr) or misses timing is reported in one line naming
what overflowed and the largest ``--pes`` that the estimate says fits. Without ``--model`` a
small built-in test network is used (the CI smoke configuration).

Progress goes to stderr as it happens, one line per stage (elaborate, synth, place and route,
pack, program) with the elapsed seconds, nextpnr's utilisation and fmax estimates as it prints
them, and a line a minute while a tool is silent; ``--verbose`` also streams the tools' own
logs, ``--quiet`` prints only errors (and the summary on stdout).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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

from kep_hw.board.profiles import list_boards, load_board
from kep_hw.gateware.params import parse_pes
from kep_hw.system.plan import PARAM_WORD_BITS, WEIGHT_ELEM_BITS, NetworkPlan, plan_network

__all__ = ["estimate_resources", "largest_fitting_pes", "parse_nextpnr_log", "parse_yosys_stats",
           "parse_pes", "Progress", "NextpnrWatcher", "YosysWatcher", "run_tool", "main"]

log = logging.getLogger(__name__)

#: seconds of tool silence after which a "still running" progress line is printed
HEARTBEAT_S = 60.0

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
    routing); :attr:`phase` is what nextpnr is doing now.
    """

    def __init__(self):
        self.phase = "reading the netlist"
        self._util: dict[str, tuple[int, int]] | None = None
        self.fmax: dict[str, dict] = {}
        self.routed = False

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
              or "Starting placement" in line) and self.phase != "placing":
            self.phase = "placing"
            notes.append("placing")
        elif "simulated annealing placer" in line and self.phase == "placing":
            self.phase = "refining the placement"
        elif re.match(r"^Info: (Routing\.\.|Running router2|Routing globals)", line) \
                and self.phase != "routing":
            self.phase = "routing"
            self.routed = True
            notes.append("routing")
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
                now = time.monotonic()
                if now - last >= heartbeat_s:
                    phase = getattr(watcher, "phase", None)
                    progress.info(f"{stage}: still running after {now - started:.0f} s"
                                  + (f" ({phase})" if phase else ""))
                    last = now
                continue
            if line is None:
                break
            line = line.rstrip("\r\n")
            tail.append(line)
            if tool_log.isEnabledFor(logging.DEBUG):
                tool_log.debug("%s", line)
            note = watcher(line) if watcher is not None else None
            if note:
                progress.info(f"{stage}: {note}")
                last = time.monotonic()
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


def _parser() -> argparse.ArgumentParser:
    from kep_hw.board.toolchain import PREFERENCES
    p = _Parser(prog="python -m kep_hw.build", description=__doc__.split("\n")[0])
    p.add_argument("--board", default="ulx3s",
                   help=f"board profile ({', '.join(list_boards())}; ulx3s = ulx3s-85f)")
    p.add_argument("--model", default=None, help=".kep model (default: small test network)")
    p.add_argument("--pes", default=None,
                   help="P, or PxPX: P PEs as PX output pixels x P/PX channels "
                        "(default: the board's)")
    p.add_argument("--lanes", type=int, default=None,
                   help="channels per activation word (default: the board's, else 4)")
    p.add_argument("--freq", type=float, default=None,
                   help=f"core clock MHz, {MIN_MHZ:g}-{MAX_MHZ:g} (default: the board's)")
    p.add_argument("--weights", choices=("auto", "embedded", "stream"), default="auto",
                   help="embed all weights, stream them per layer, or choose by fit (auto)")
    p.add_argument("--out", default="build/kep", help="output folder (default build/kep)")
    p.add_argument("--baud", type=int, default=None, help="UART baud rate (board default)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (>= 0)")
    p.add_argument("--router", choices=("router2", "router1"), default="router2",
                   help="nextpnr router (router2 default: router1 did not converge on the 85F "
                        "with 64 PEs)")
    p.add_argument("--abc9", action="store_true",
                   help="map LUTs with Yosys' abc9 (synth_ecp5's own flow); by default "
                        "classic abc, because Yosys 0.70's abc9 aborts on the kep engine")
    p.add_argument("--toolchain", choices=PREFERENCES, default="auto",
                   help="where the tools come from: native on PATH first, else YoWASP (auto), "
                        "native only, or YoWASP only; YOSYS, NEXTPNR_ECP5, ECPPACK, "
                        "OPENFPGALOADER set by the user always win")
    p.add_argument("--program", action="store_true", help="load the bitstream with openFPGALoader")
    p.add_argument("--dry-run", action="store_true",
                   help="elaborate and write the tool inputs without running the tools")
    add_logging_args(p)
    return p


#: the core clock range ``--freq`` accepts (MHz)
MIN_MHZ, MAX_MHZ = 10.0, 200.0


def _check_args(args, board) -> tuple[int, int, float, int]:
    """Validated ``(pes, px, freq, baud)``; a bad value is one :class:`KepError`."""
    pes, px = parse_pes(args.pes) if args.pes is not None else (board.default_pes,
                                                                board.default_px)
    if args.lanes is None:
        args.lanes = board.default_lanes
    if args.lanes < 1 or args.lanes & (args.lanes - 1):
        raise KepError(f"--lanes must be a power of two, got {args.lanes}")
    if pes > 255 or (pes // px) % args.lanes:
        raise KepError(f"--pes: P/PX must be a multiple of --lanes {args.lanes} and P at most "
                       f"255, got {pes}x{px}")
    freq = board.default_mhz if args.freq is None else args.freq
    if not (math.isfinite(freq) and MIN_MHZ <= freq <= MAX_MHZ):
        raise KepError(f"--freq must be a clock in [{MIN_MHZ:g}, {MAX_MHZ:g}] MHz, got {freq:g}")
    baud = board.baud if args.baud is None else args.baud
    if baud <= 0:
        raise KepError(f"--baud must be a positive rate, got {baud}")
    if args.seed < 0:
        raise KepError(f"--seed must be >= 0, got {args.seed}")
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


def _run_tools(commands, *, build_dir: Path, env: dict, progress: Progress, fail) -> None:
    """Run the synth, place and route and pack commands with progress; ``fail(msg)`` raises."""
    for stage, argv in commands:
        watcher = (YosysWatcher() if stage.startswith("synth") else
                   NextpnrWatcher() if stage.startswith("place") else None)
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
    from kep_hw.board.toolchain import configure_amaranth, tool_versions
    from kep_hw.gateware.uart import uart_divisor
    try:
        pll = ecp5_pll_params(board.clk_mhz, freq)
        divisor = uart_divisor(pll["fout"] * 1e6, baud)
    except ValueError as e:
        raise KepError(str(e)) from None
    if pll["err"] > 1e-6 * freq:
        log.warning("the PLL makes %.4f MHz of the %g MHz asked for (%g MHz oscillator)",
                    pll["fout"], freq, board.clk_mhz)
    found = _find_tools(args.toolchain, need_programmer=args.program, dry_run=args.dry_run)
    # the tools' variables for the build plan's script, never written into our own environment
    tool_env = dict(os.environ)
    configure_amaranth(found, tool_env)
    out = Path(args.out)
    build_dir = out / "build"
    name = "kep_top"
    wmode = "streamed" if streamed else "embedded"
    with progress.stage("elaborate", f"{board.name}, P={pes} ({po} channels x {px} pixels), "
                                     f"{wmode} weights, {len(plan.layers)} layers, PLL "
                                     f"{board.clk_mhz:g} -> {pll['fout']:.3f} MHz"):
        system = KepSystem(plan, streamed=streamed, divisor=divisor, clk_hz=pll["fout"] * 1e6,
                           byte_timeout=int(pll["fout"] * 1e6 * 0.05), px=px)
        top = BoardTop(system, board, freq)
        platform = board.make_platform()
        # verbose: the tools print their whole log, which is streamed and parsed as it comes
        overrides = {"nextpnr_opts": f"--timing-allow-fail --seed {args.seed} "
                                     f"--router {args.router}", "verbose": True}
        if not args.abc9:
            # synth_ecp5 up to its LUT mapping, classic ABC for the LUTs, then the rest of it
            overrides["synth_opts"] = "-run :map_luts"
            overrides["script_after_synth"] = "\n".join([
                "techmap -map +/lattice/latches_map.v", "abc -lut 4", "clean",
                f"synth_ecp5 -top {name} -run map_cells:"])
        products = platform.build(top, name=name, build_dir=build_dir, do_build=False,
                                  **overrides)
        products.extract(build_dir)
    commands = _tool_commands(build_dir, name, found) if not args.dry_run else []

    def fail(msg):
        best = largest_fitting_pes(kep, board, lanes=args.lanes, streamed=streamed, px=px)
        raise KepError(f"{msg}; logs in {build_dir}; largest --pes that fits by the "
                       f"estimate: {best}")

    if args.dry_run:
        progress.info(f"dry run: synth, place and route and pack skipped; tool inputs and "
                      f"build_{name}.sh in {build_dir}")
        status = "dry-run"
        util, clocks, stats = {}, {}, {}
    else:
        for f in (f"{name}.bit", f"{name}.tim", f"{name}.rpt"):
            (build_dir / f).unlink(missing_ok=True)       # no stale result of an earlier run
        _run_tools(commands, build_dir=build_dir, env=tool_env, progress=progress, fail=fail)
        parsed = parse_nextpnr_log((build_dir / f"{name}.tim").read_text())
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
        "lanes": args.lanes, "weights": wmode,
        "abc9": args.abc9,
        "model": str(args.model) if args.model else "built-in test network",
        "layers": len(plan.layers), "uart_baud": baud, "uart_divisor": divisor,
        "freq_requested_mhz": freq, "freq_pll_mhz": pll["fout"],
        "pll": {k: pll[k] for k in ("refdiv", "fbdiv", "opdiv", "fvco")},
        "fmax_mhz": fmax, "timing_met": met, "clocks": clocks,
        "utilisation": {"luts": used("TRELLIS_COMB"), "ffs": used("TRELLIS_FF"),
                        "dsps": used("MULT18X18D"), "brams": used("DP16KD")},
        "estimate": est, "budget": {"luts": board.luts, "dsps": board.dsps,
                                    "brams": board.brams},
        "yosys_cells": stats, "toolchain": args.toolchain, "tools": tool_versions(found),
        "stage_seconds": dict(progress.seconds),
        "seconds": progress.elapsed(), "environment": environment_info(),
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
        with progress.stage("program (openFPGALoader)"):
            rc, tail = run_tool("program (openFPGALoader)", cmd, cwd=out, progress=progress,
                                env=tool_env)
            if rc != 0:
                raise KepError(f"programming failed (exit code {rc}): {_error_line(tail)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
