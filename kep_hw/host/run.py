# SPDX-License-Identifier: Apache-2.0
"""Host runtime: classify CIFAR-10 test images on the board (or its RTL simulation).

``python -m kep_hw.run --port /dev/ttyUSB0 --model model.kep --data-dir DIR --n N`` sends each
int8 image over the UART, receives the last conv output and the hardware cycle counter, runs
global average pooling and the classifier on the host (exact integers), and prints top-1, the
golden model's top-1 on the same images, every disagreement and the cycles per image.
``--sim`` runs the same code against the Verilator simulation of the whole top level
(:mod:`kep_hw.bench.system_sim`) instead of a serial port. ``--port`` takes a device path or a
pyserial URL (``socket://host:port``, ``rfc2217://host:port``).

Every numeric option is checked first, and a board that misbehaves (silent, too slow, hangs up,
sends garbage or frames it should not) ends the run with one ``error: ...`` line and exit code
2: each answer must start within ``--timeout`` and each image must be done within
``--image-timeout`` (see :class:`kep_hw.host.link.BoardLink`).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from kep_common.errors import KepError, cli_errors
from kep_common.log import add_logging_args, setup_logging, verbosity
from kep_common.fileio import atomic_write_json, environment_info

from kep_hw.gateware.params import parse_pes
from kep_hw.gateware.perf import LayerShape, ideal_cycles
from kep_hw.host.link import BoardLink, open_port
from kep_hw.system.plan import plan_network, run_tail
from kep_hw.system.protocol import BoardTimeout

__all__ = ["main", "classify"]

#: Limits of the numeric options (P and Px as the build's, the rest sanity bounds).
MAX_PES, MAX_PX, MAX_LANES = 255, 16, 64
MIN_BAUD, MAX_BAUD = 300, 50_000_000
MAX_SECONDS = 86400.0
MAX_FMAX_MHZ = 1000.0


def classify(link: BoardLink, x: torch.Tensor, *, progress=None,
             outputs: list | None = None) -> tuple[list, list]:
    """Run int8 images ``[N, C, H, W]`` through ``link``; returns (logits list, cycles list).

    Parameters
    ----------
    link : BoardLink
        A connected board (or simulation).
    x : torch.Tensor
        int8 images ``[N, C, H, W]``.
    progress : callable, optional
        Called as ``progress(n, logits, cycles, out)`` after each image.
    outputs : list, optional
        If given, each image's last conv output (int8 ``[C, H, W]``) is appended to it.
    """
    logits, cycles = [], []
    for n in range(x.shape[0]):
        out, cyc = link.infer(x[n])
        logits.append(run_tail(link.plan.tail, out))
        cycles.append(cyc)
        if outputs is not None:
            outputs.append(out)
        if progress:
            progress(n, logits[-1], cyc, out)
    return logits, cycles


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and one ``error: ...`` line on a bad option."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m kep_hw.run", description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port of the board: a device (/dev/ttyUSB0, "
                       "COM3) or a pyserial URL (socket://host:port, rfc2217://host:port)")
    where.add_argument("--sim", action="store_true",
                       help="run against the Verilator simulation of the whole top level")
    p.add_argument("--model", required=True, help=".kep model the bitstream was built for")
    p.add_argument("--data-dir", required=True, help="CIFAR-10 folder")
    p.add_argument("--n", type=int, default=20, help="number of test images (default 20)")
    p.add_argument("--offset", type=int, default=0, help="first test image (default 0)")
    p.add_argument("--pes", default="16",
                   help="P of the bitstream, or PxPX (P PEs as PX pixels x P/PX channels; "
                        f"default 16, at most {MAX_PES})")
    p.add_argument("--lanes", type=int, default=4, help="channels per activation word (4)")
    p.add_argument("--baud", type=int, default=1000000,
                   help="UART baud rate of the board (default 1000000)")
    p.add_argument("--streamed", action="store_true",
                   help="(--sim) build the streamed-weights variant")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds for each answer of the board to start, its computation "
                        "included (default 10, --sim 600)")
    p.add_argument("--image-timeout", type=float, default=None,
                   help="seconds one image may take in all (default: --timeout + twice the "
                        "image's bytes on the wire at --baud + 50 ms a frame + 1 s)")
    p.add_argument("--fmax", type=float, default=None,
                   help="clock in MHz for the latency (default: the board's reported clock)")
    p.add_argument("--build-root", default="sim_build", help="(--sim) build folder")
    p.add_argument("--out", default=None, help="write a JSON report here")
    add_logging_args(p)
    return p


def _check_args(args) -> tuple[int, int]:
    """Check every numeric option (one clear line for a bad one); returns ``(P, Px)``."""
    if args.n < 1 or args.offset < 0:
        raise KepError(f"--n must be >= 1 and --offset >= 0, got {args.n}, {args.offset}")
    pes, px = parse_pes(args.pes)
    if pes > MAX_PES or px > MAX_PX:
        raise KepError(f"--pes: P must be at most {MAX_PES} and PX at most {MAX_PX}, "
                       f"got {args.pes}")
    if not 1 <= args.lanes <= MAX_LANES or args.lanes & (args.lanes - 1):
        raise KepError(f"--lanes must be a power of two up to {MAX_LANES}, got {args.lanes}")
    if (pes // px) % args.lanes:
        raise KepError(f"--pes: P/PX ({pes // px}) must be a multiple of --lanes {args.lanes}")
    if not MIN_BAUD <= args.baud <= MAX_BAUD:
        raise KepError(f"--baud must lie in [{MIN_BAUD}, {MAX_BAUD}], got {args.baud}")
    for name in ("timeout", "image_timeout"):
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and 0 < v <= MAX_SECONDS):
            raise KepError(f"--{name.replace('_', '-')} must be a finite number of seconds "
                           f"in (0, {MAX_SECONDS:g}], got {v:g}")
    if args.fmax is not None and not (math.isfinite(args.fmax)
                                      and 0 < args.fmax <= MAX_FMAX_MHZ):
        raise KepError(f"--fmax must be a clock in MHz in (0, {MAX_FMAX_MHZ:g}], "
                       f"got {args.fmax:g}")
    return pes, px


def _check_info(info, px: int, fmax) -> None:
    """Refuse a board whose ``INFO`` disagrees with ``--pes`` or has no usable clock."""
    if info["px"] != px:
        raise KepError(f"the board's bitstream has PX={info['px']} (--pes "
                       f"{info['po'] * info['px']}x{info['px']}), not {px}")
    if fmax is None and info["clk_khz"] == 0:
        raise KepError("the board reports a clock of 0 kHz in its INFO frame; give the "
                       "clock with --fmax MHz")


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    args = _parser().parse_args(argv)
    setup_logging(verbosity(args))
    pes, px = _check_args(args)
    from kep_train.data.cifar import load_cifar10
    from kep_train.golden.evaluate import quantize_input, run_network, top1
    from kep_train.export.kepfile import load_kep
    kep = load_kep(args.model)
    plan = plan_network(kep, po=pes // px, lanes=args.lanes)
    images, labels = load_cifar10(args.data_dir, train=False, download=False)
    if args.offset + args.n > images.shape[0]:
        raise KepError(f"only {images.shape[0]} test images, asked for "
                       f"{args.offset}..{args.offset + args.n}")
    sel = slice(args.offset, args.offset + args.n)
    x = quantize_input(kep, images[sel])
    labels = labels[sel]
    golden_logits, golden_acts = run_network(kep, x, return_all=True)
    golden = top1(golden_logits)
    golden_last = golden_acts[kep.conv_layers[-1].name]
    mismatched = []
    timeout = args.timeout if args.timeout is not None else (600.0 if args.sim else 10.0)

    def progress(n, logits, cyc, out):
        pred = int(torch.argmax(logits))
        bad = int((out != golden_last[n]).sum())
        mismatched.append(bad)
        flag = "" if pred == int(golden[n]) else "  DISAGREES with golden"
        print(f"image {args.offset + n}: label {int(labels[n])} board {pred} golden "
              f"{int(golden[n])} cycles {cyc} last-conv values differing {bad}{flag}",
              flush=True)

    def run_on(port, baud):
        link = BoardLink(port, plan, timeout=timeout, image_timeout=args.image_timeout,
                         baud=baud)
        try:
            info = link.connect()
            _check_info(info, px, args.fmax)
            return (info, *classify(link, x, progress=progress))
        except BoardTimeout as e:
            raise BoardTimeout(f"{e}; --timeout {timeout:g} s, --image-timeout "
                               f"{link.image_timeout():.3g} s") from None

    t0 = time.monotonic()
    if args.sim:
        from kep_hw.bench.system_sim import SimBoard
        with SimBoard(plan, streamed=args.streamed, build_root=args.build_root,
                      px=px) as port:
            info, logits, cycles = run_on(port, None)
    else:
        with open_port(args.port, baud=args.baud, timeout=timeout) as port:
            info, logits, cycles = run_on(port, args.baud)
    seconds = time.monotonic() - t0
    board = torch.stack([top1(lg.unsqueeze(0))[0] for lg in logits])
    disagree = [args.offset + i for i in range(args.n) if int(board[i]) != int(golden[i])]
    fmax = args.fmax if args.fmax is not None else info["clk_khz"] / 1000
    mean_cyc = sum(cycles) / len(cycles)
    ideal = ideal_cycles([LayerShape.from_layer(cl) for cl in kep.conv_layers], pes)
    report = {
        "n": args.n, "offset": args.offset, "mode": "streamed" if info["streamed"] else
        "embedded", "target": "sim" if args.sim else args.port, "pes": pes, "px": px,
        "top1_board": float((board == labels).float().mean()),
        "top1_golden": float((golden == labels).float().mean()),
        "disagreements": disagree, "mismatched_values": mismatched,
        "bit_exact": not any(mismatched), "cycles": cycles, "cycles_mean": mean_cyc,
        "ideal_cycles": ideal, "fmax_mhz": fmax,
        "latency_ms": mean_cyc / fmax / 1e3, "ideal_latency_ms": ideal / fmax / 1e3,
        "seconds": seconds, "environment": environment_info(),
    }
    print(f"top-1 board {report['top1_board']:.2%}  golden {report['top1_golden']:.2%}  "
          f"on {args.n} images; disagreements: {len(disagree)} {disagree or ''}")
    print(f"last conv output bit-exact on {mismatched.count(0)} of {args.n} images")
    share = f"{ideal / mean_cyc:.1%}" if mean_cyc else "n/a: the board counted 0 cycles"
    print(f"cycles/image {mean_cyc:.0f} (ideal {ideal:.0f} = non-zero MACs / P, "
          f"{share}); at {fmax:g} MHz: {report['latency_ms']:.2f} ms/image "
          f"(ideal {report['ideal_latency_ms']:.2f} ms)")
    if args.out:
        atomic_write_json(args.out, report)
    return 0 if not disagree and not any(mismatched) else 1


if __name__ == "__main__":
    raise SystemExit(main())
