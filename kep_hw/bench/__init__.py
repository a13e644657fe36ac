# SPDX-License-Identifier: Apache-2.0
"""Simulation benches: amaranth.sim stream helpers (:mod:`.amaranth_sim`), cocotb layer runs on
Verilator or Icarus (:mod:`.cosim` with the testbench :mod:`.layer_tb`), the whole system behind a
pseudo-terminal (:mod:`.system_sim` with :mod:`.system_tb`), the shared Verilator set-up
(:mod:`.verilator`) and the ``sim`` command (:mod:`.sim`)."""
