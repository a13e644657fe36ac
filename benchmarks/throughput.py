# SPDX-License-Identifier: Apache-2.0
"""End-to-end images per second of a board, UART included: computed, and checked in simulation.

    python benchmarks/throughput.py --model runs/r20-k4/model.kep --board ulx3s --images 4

With overlapped I/O (``kep_hw.host.link.BoardLink.infer_many``: the board receives image k+1
while it computes image k, the host sends image k+2 when the ``RESULT`` of image k arrives),
one image costs in steady state the longest of: its computation (cycles), its ``IMAGE`` frame on
the wire and its ``RESULT`` frame on the wire (10 bits a byte at the board's baud rate). This
script

1. computes that figure for the ``--board`` profile's default build (P, Px, G, clock, baud)
   from the model's shapes and the cycles measured in step 2;
2. runs the whole system in Verilator with the board's real UART divisor (so the UART takes its
   real share of design cycles), sends ``--images`` images overlapped through the host runtime,
   and measures the design cycles between successive ``RESULT`` frames (the testbench logs the
   cycle of every byte the design sends); the last interval is the steady state;
3. writes both, and the compute-only figure, to ``--out`` (JSON, with the environment).

The host's own time (USB latency, Python) is not in the simulated figure: on a real board the
FT231X's USB transfers add to each frame; ``python -m kep_hw.run --port ...`` prints the
measured end-to-end figure there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from kep_common.errors import KepError, cli_errors
from kep_common.fileio import atomic_write_json, environment_info
from kep_common.log import add_logging_args, setup_logging, verbosity

RESULTS = Path(__file__).resolve().parent / "results"
#: bytes a frame adds to its payload (SYNC, TYPE, LEN, CRC)
FRAME_OVERHEAD = 6


def _result_starts(log_file: Path) -> list[int]:
    """Design cycles at which ``RESULT`` frames start, from the testbench's TX log."""
    from kep_hw.system.protocol import SYNC, FrameType
    rows = [tuple(int(float(v)) for v in line.split())
            for line in log_file.read_text().splitlines() if line.strip()]
    starts, n = [], 0
    while n + 3 < len(rows):
        if rows[n][1] != SYNC:
            n += 1
            continue
        ftype = rows[n + 1][1]
        length = rows[n + 2][1] | rows[n + 3][1] << 8
        if ftype == FrameType.RESULT:
            starts.append(rows[n][0])
        n += 4 + length + 2
    return starts


@cli_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/throughput.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help=".kep model")
    p.add_argument("--board", default="ulx3s", help="board profile (default ulx3s)")
    p.add_argument("--images", type=int, default=4,
                   help="images sent overlapped in the simulation (default 4, at least 3)")
    p.add_argument("--build-root", default="sim_build", help="Verilator build folder")
    p.add_argument("--out", default=str(RESULTS / "throughput.json"))
    add_logging_args(p)
    args = p.parse_args(argv)
    setup_logging(verbosity(args))
    if not 3 <= args.images <= 64:
        raise KepError(f"--images must lie in [3, 64], got {args.images}")
    from kep_hw.bench.system_sim import SimBoard
    from kep_hw.board.profiles import load_board
    from kep_hw.gateware.uart import uart_divisor
    from kep_hw.host.link import BoardLink
    from kep_hw.system.plan import plan_network
    from kep_hw.testing import reference_logits
    from kep_train.export.kepfile import load_kep

    board = load_board(args.board)
    kep = load_kep(args.model)
    pes, px, lanes = board.default_pes, board.default_px, board.default_lanes
    plan = plan_network(kep, po=pes // px, lanes=lanes)
    clk_hz = board.default_mhz * 1e6
    divisor = uart_divisor(clk_hz, board.baud)
    in_bytes = FRAME_OVERHEAD + plan.image_bytes
    out_bytes = FRAME_OVERHEAD + plan.result_bytes(False)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randint(-128, 128, tuple(plan.in_shape), generator=g, dtype=torch.int8)
          for _ in range(args.images)]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kep-throughput-") as tmp:
        log_file = Path(tmp) / "tx.log"
        with SimBoard(plan, px=px, divisor=divisor, tx_log=log_file,
                      rq_lanes=board.rq_lanes_for(lanes), lut_pes=board.default_lut_pes,
                      operand_reg=board.default_operand_reg,
                      build_root=args.build_root) as port:
            link = BoardLink(port, plan, timeout=3600, byte_timeout=600)
            link.connect()
            got = list(link.infer_many(xs))
        starts = _result_starts(log_file)
    for x, (logits, _, _) in zip(xs, got):
        if not torch.equal(logits, reference_logits(kep, x)):
            raise KepError("the simulated board's logits differ from the golden model's")
    cycles = got[-1][2]
    intervals = [b - a for a, b in zip(starts, starts[1:])]
    bit_cycles = 10 * divisor
    model = {"compute": cycles, "image_frame": in_bytes * bit_cycles,
             "result_frame": out_bytes * bit_cycles}
    bound = max(model, key=model.get)
    predicted = model[bound]
    report = {
        "model": str(args.model), "board": board.name, "pes": pes, "px": px, "lanes": lanes,
        "clock_mhz": board.default_mhz, "baud": board.baud, "uart_divisor": divisor,
        "image_frame_bytes": in_bytes, "result_frame_bytes": out_bytes,
        "cycles_per_image": cycles, "cycles_by_part": model, "bound": bound,
        "predicted_interval_cycles": predicted,
        "predicted_images_per_second": round(clk_hz / predicted, 2),
        "compute_only_images_per_second": round(clk_hz / cycles, 2),
        "simulated_result_intervals_cycles": intervals,
        "simulated_images_per_second": (round(clk_hz / intervals[-1], 2) if intervals
                                        else None),
        "images": args.images, "logits_equal_golden": len(got),
        "seconds": round(time.monotonic() - t0, 1), "environment": environment_info(),
    }
    atomic_write_json(args.out, report)
    print(json.dumps({k: report[k] for k in (
        "bound", "predicted_images_per_second", "simulated_images_per_second",
        "compute_only_images_per_second", "simulated_result_intervals_cycles")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
