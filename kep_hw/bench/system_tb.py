# SPDX-License-Identifier: Apache-2.0
"""cocotb testbench of the whole system top level: a UART model behind a pseudo-terminal.

Loaded by the cocotb runner inside the simulator (:mod:`kep_hw.bench.system_sim` starts it).
The test opens a pseudo-terminal, writes the name of its slave side to ``$KEP_PTY_FILE`` and
then moves bytes between the pty and the design's UART pins, bit by bit at ``$KEP_DIVISOR`` clock
cycles per bit, until ``$KEP_STOP_FILE`` exists. With ``$KEP_TX_LOG`` set, every byte the design
sends is also written there as a line ``cycle byte`` (the clock cycle of its start bit). The host opens the slave with pyserial exactly
as it opens a board's serial port, so the very same host code runs against the RTL.
"""

from __future__ import annotations

import os
import time
import tty

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer
from cocotb.utils import get_sim_time

CLK_NS = 10


class UartPtyBridge:
    """Owns clock, reset, the pty and the two UART directions."""

    def __init__(self, dut):
        self.dut = dut
        self.divisor = int(os.environ.get("KEP_DIVISOR", "8"))
        self.bit_ns = self.divisor * CLK_NS
        self.stop_file = os.environ["KEP_STOP_FILE"]
        self.deadline = time.monotonic() + float(os.environ.get("KEP_SIM_WALL_S", "3600"))
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.rx_bytes = 0
        self.tx_bytes = 0
        log = os.environ.get("KEP_TX_LOG")
        self.tx_log = open(log, "w", buffering=1) if log else None

    async def reset(self):
        Clock(self.dut.clk, CLK_NS, unit="ns").start()
        self.dut.rx.value = 1
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 5)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 5)

    async def monitor_tx(self):
        """Design TX -> pty: sample each bit in its middle."""
        while True:
            await FallingEdge(self.dut.tx)
            start_cycle = int(get_sim_time(unit="ns")) // CLK_NS
            await Timer(self.bit_ns // 2, unit="ns")
            if int(self.dut.tx.value) != 0:
                continue                    # glitch
            byte = 0
            for n in range(8):
                await Timer(self.bit_ns, unit="ns")
                byte |= int(self.dut.tx.value) << n
            await Timer(self.bit_ns, unit="ns")
            if int(self.dut.tx.value) == 1:
                os.write(self.master, bytes([byte]))
                self.tx_bytes += 1
                if self.tx_log is not None:
                    self.tx_log.write(f"{start_cycle} {byte}\n")

    async def drive_rx(self):
        """pty -> design RX; returns when the stop file appears."""
        poll_ns = 200 * self.bit_ns
        while not os.path.exists(self.stop_file) and time.monotonic() < self.deadline:
            try:
                data = os.read(self.master, 4096)
            except BlockingIOError:
                data = b""
            except OSError:
                data = b""
            if not data:
                await Timer(poll_ns, unit="ns")
                continue
            for byte in data:
                self.dut.rx.value = 0
                await Timer(self.bit_ns, unit="ns")
                for n in range(8):
                    self.dut.rx.value = (byte >> n) & 1
                    await Timer(self.bit_ns, unit="ns")
                self.dut.rx.value = 1
                await Timer(self.bit_ns, unit="ns")
                self.rx_bytes += 1


@cocotb.test()
async def serve_uart(dut):
    """Bridge the design's UART to a pseudo-terminal until the host is done."""
    tb = UartPtyBridge(dut)
    await tb.reset()
    cocotb.start_soon(tb.monitor_tx())
    with open(os.environ["KEP_PTY_FILE"] + ".tmp", "w") as f:
        f.write(os.ttyname(tb.slave))
    os.replace(os.environ["KEP_PTY_FILE"] + ".tmp", os.environ["KEP_PTY_FILE"])
    await tb.drive_rx()
    dut._log.info("bridge done: %d bytes to the design, %d from it", tb.rx_bytes, tb.tx_bytes)
