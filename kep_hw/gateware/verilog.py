# SPDX-License-Identifier: Apache-2.0
"""Emit the Verilog of :class:`kep_hw.gateware.layer_top.LayerTop` (or the bare engine).

``python -m kep_hw.verilog --pes 16 --lanes 4 -o layer_top.v``;
``--pes 64x4 --lanes 8``: P = 64 PEs split as Po = 16 output channels x Px = 4 output pixels.
``--quiet`` / ``--verbose`` as on the other commands (the "wrote" note goes to stderr).
"""

from __future__ import annotations

import argparse
import logging
import time

from amaranth.back import verilog as _verilog

from kep_common.errors import KepError, cli_errors
from kep_common.fileio import atomic_write_bytes
from kep_common.log import add_logging_args, setup_logging, verbosity

from kep_hw.gateware.params import EngineParams, parse_pes

__all__ = ["generate", "params_from_args", "add_params_args", "main"]

log = logging.getLogger(__name__)


def generate(params: EngineParams, *, top: str = "layer_top") -> str:
    """Verilog text of ``top`` (``"layer_top"`` or ``"engine"``) for ``params``.

    Raises
    ------
    KepError
        For an unknown ``top``.
    """
    if top == "layer_top":
        from kep_hw.gateware.layer_top import LayerTop
        return _verilog.convert(LayerTop(params), name="layer_top")
    if top == "engine":
        from kep_hw.gateware.engine import Engine
        return _verilog.convert(Engine(params), name="engine")
    raise KepError(f"unknown top {top!r} (expected 'layer_top' or 'engine')")


def params_from_args(args) -> EngineParams:
    """:class:`EngineParams` from parsed ``--pes/--px/--lanes/...`` options (``KepError`` if
    bad)."""
    pes, px = parse_pes(args.pes, getattr(args, "px", None))
    try:
        return EngineParams(pes=pes, px=px, lanes=args.lanes, max_cin=args.max_cin,
                            max_cout=args.max_cout, max_hw=args.max_hw,
                            act_depth=args.act_depth, wt_depth=args.wt_depth,
                            prm_depth=args.prm_depth,
                            rq_lanes=getattr(args, "rq_lanes", None),
                            lut_pes=getattr(args, "lut_pes", 0),
                            operand_reg=bool(getattr(args, "operand_reg", False)),
                            dist_reg=bool(getattr(args, "dist_reg", False)))
    except ValueError as e:
        raise KepError(str(e)) from None


def add_params_args(ap: argparse.ArgumentParser) -> None:
    """Add the engine-size options to a parser."""
    d = EngineParams()
    ap.add_argument("--pes", default=str(d.pes), metavar="P[xPX]",
                    help="processing elements P, optionally with their split over output "
                         "pixels: 64x4 = Px 4 pixels x Po 16 output channels (default "
                         f"{d.pes}, Px 1)")
    ap.add_argument("--px", type=int, default=None,
                    help="Px, output pixels computed at once (same as the x of --pes)")
    ap.add_argument("--lanes", type=int, default=d.lanes, help="channels per activation word G")
    ap.add_argument("--rq-lanes", type=int, default=None, metavar="L",
                    help="requantization lanes L, outputs per cycle (divides G; default G)")
    ap.add_argument("--lut-pes", type=int, default=0, metavar="N",
                    help="PEs whose multiplier is built from logic instead of a DSP (default 0)")
    ap.add_argument("--operand-reg", action="store_true",
                    help="a register per PE between its operand multiplexer and its multiplier "
                         "(one more MAC pipeline stage; for large P)")
    ap.add_argument("--dist-reg", action="store_true",
                    help="two more register levels for the weight word, the window and the MAC "
                         "flags before they leave for the pixel groups (two more MAC pipeline "
                         "stages; needs Px > 1)")
    ap.add_argument("--max-cin", type=int, default=d.max_cin)
    ap.add_argument("--max-cout", type=int, default=d.max_cout)
    ap.add_argument("--max-hw", type=int, default=d.max_hw)
    ap.add_argument("--act-depth", type=int, default=d.act_depth)
    ap.add_argument("--wt-depth", type=int, default=d.wt_depth)
    ap.add_argument("--prm-depth", type=int, default=d.prm_depth)


@cli_errors
def main(argv=None) -> None:
    """Command line: write the Verilog of a parameter set."""
    ap = argparse.ArgumentParser(prog="python -m kep_hw.verilog", description=__doc__)
    add_params_args(ap)
    ap.add_argument("--top", default="layer_top", choices=["layer_top", "engine"])
    ap.add_argument("-o", "--output", default="layer_top.v")
    add_logging_args(ap)
    args = ap.parse_args(argv)
    setup_logging(verbosity(args))
    t0 = time.monotonic()
    text = generate(params_from_args(args), top=args.top)
    atomic_write_bytes(args.output, text.encode())
    log.info("wrote %s (%.1f s)", args.output, time.monotonic() - t0)


if __name__ == "__main__":
    main()
