# SPDX-License-Identifier: Apache-2.0
"""Host runtime: classify images on the board (or its RTL simulation).

``python -m kep_hw.run --port auto --model model.kep --data-dir DIR --n N`` asks the board what
it runs (its ``INFO`` frame: Po, Px, G, classes), plans the network for it, sends each int8
CIFAR-10 test image over the UART, receives the int32 logits of the on-chip head (global
average pooling and classifier) and the hardware cycle counter, compares them with the golden
model's on the same images, and prints top-1, every difference and the cycles per image.
``--fmap`` also fetches and compares each image's last conv output (a debugging aid).
``--image FILE...`` classifies the user's own images instead (any size: scaled with Pillow's
bilinear filter so the shorter side fits the model's input, then centre-cropped; or
``--resize stretch``). ``--sim`` runs the same code against the Verilator simulation of the
whole top level (:mod:`kep_hw.bench.system_sim`), configured as the ``--board`` profile's
default build unless ``--pes``/``--lanes`` say otherwise. ``--port`` takes a device path, a
pyserial URL (``socket://host:port``, ``rfc2217://host:port``) or ``auto`` (the one port with
the board's USB adapter). The Python API is :mod:`kep_hw.host.api`.

Every numeric option is checked first, and a board that misbehaves (silent, too slow, hangs up,
sends garbage or frames it should not), disagrees with ``--pes``/``--lanes`` or runs another
model ends the run with one ``error: ...`` line and exit code 2: each answer must start within
``--timeout`` and each image must be done within ``--image-timeout`` (see
:class:`kep_hw.host.link.BoardLink`).
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
from kep_hw.host.api import RESIZE_MODES, class_names, open_board
from kep_hw.host.link import BoardLink
from kep_hw.system.plan import run_tail
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

    (Kept for callers of the link; :meth:`kep_hw.host.api.Board.classify` is the API.)

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
        lg, out, cyc = link.infer(x[n], fmap=outputs is not None)
        logits.append(lg if lg is not None else run_tail(link.plan.tail, out))
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
                       "COM3), a pyserial URL (socket://host:port, rfc2217://host:port) or "
                       "'auto' (the one port with the --board's USB adapter)")
    where.add_argument("--sim", action="store_true",
                       help="run against the Verilator simulation of the whole top level")
    p.add_argument("--board", default="ulx3s",
                   help="board profile (default ulx3s = ulx3s-85f): default --baud, the USB "
                        "adapter of --port auto, and the --sim build's P, PX, G and weights")
    p.add_argument("--model", required=True, help=".kep model the bitstream was built for")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data-dir", help="CIFAR-10 folder: classify its test images")
    what.add_argument("--image", nargs="+", metavar="FILE",
                      help="classify these image files (any size; see --resize)")
    p.add_argument("--resize", choices=RESIZE_MODES, default="crop",
                   help="(--image) fit to the model's input: 'crop' scales (bilinear) so the "
                        "shorter side fits and cuts the centre (default), 'stretch' scales to "
                        "the input size")
    p.add_argument("--n", type=int, default=20, help="number of test images (default 20)")
    p.add_argument("--offset", type=int, default=0, help="first test image (default 0)")
    p.add_argument("--pes", default=None,
                   help="P of the bitstream, or PxPX (P PEs as PX pixels x P/PX channels; at "
                        f"most {MAX_PES}); default: the board's INFO (--sim: the --board "
                        "profile's); given, it must agree with the board")
    p.add_argument("--lanes", type=int, default=None,
                   help="G, channels per activation word; default as --pes (with --pes "
                        "and --sim: the profile's G, halved until P/PX is a multiple of it)")
    p.add_argument("--operand-reg", action=argparse.BooleanOptionalAction, default=None,
                   help="(--sim) a register per PE before its multiplier, as the build's "
                        "--operand-reg (default: the profile's without --pes, else off)")
    p.add_argument("--dist-reg", action="store_true",
                   help="(--sim) the engine's distribution register before its pixel groups, "
                        "as the build's --dist-reg (needs PX > 1)")
    p.add_argument("--baud", type=int, default=None,
                   help="UART baud rate of the board (default: the --board profile's)")
    p.add_argument("--streamed", action="store_true",
                   help="(--sim) build the streamed-weights variant (default: the --board "
                        "profile's weight mode)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds for each answer of the board to start, its computation "
                        "included (default 10, --sim 600)")
    p.add_argument("--image-timeout", type=float, default=None,
                   help="seconds one image may take in all (default: --timeout + twice the "
                        "image's bytes on the wire at --baud + 50 ms a frame + 1 s)")
    p.add_argument("--fmax", type=float, default=None,
                   help="clock in MHz for the latency (default: the board's reported clock)")
    p.add_argument("--build-root", default="sim_build", help="(--sim) build folder")
    p.add_argument("--fmap", action="store_true",
                   help="debug: the board also returns each image's last conv output "
                        "(IMAGE_FMAP), compared with the golden model's")
    p.add_argument("--out", default=None, help="write a JSON report here")
    add_logging_args(p)
    return p


def _check_args(args) -> tuple:
    """Check every numeric option (one clear line for a bad one); returns ``(P, Px)``, both
    ``None`` without ``--pes``."""
    if args.n < 1 or args.offset < 0:
        raise KepError(f"--n must be >= 1 and --offset >= 0, got {args.n}, {args.offset}")
    pes = px = None
    if args.pes is not None:
        pes, px = parse_pes(args.pes)
        if pes > MAX_PES or px > MAX_PX:
            raise KepError(f"--pes: P must be at most {MAX_PES} and PX at most {MAX_PX}, "
                           f"got {args.pes}")
    if args.lanes is not None:
        if not 1 <= args.lanes <= MAX_LANES or args.lanes & (args.lanes - 1):
            raise KepError(f"--lanes must be a power of two up to {MAX_LANES}, got "
                           f"{args.lanes}")
        if pes is not None and (pes // px) % args.lanes:
            raise KepError(f"--pes: P/PX ({pes // px}) must be a multiple of --lanes "
                           f"{args.lanes}")
    if args.baud is not None and not MIN_BAUD <= args.baud <= MAX_BAUD:
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


def _inputs(args, kep):
    """``(names, int8 images, labels or None)`` of the images to classify."""
    if args.image:
        from kep_hw.host.api import load_images
        return list(args.image), load_images(list(args.image), kep, resize=args.resize), None
    from kep_train.data.cifar import load_cifar10
    from kep_train.golden.evaluate import quantize_input
    images, labels = load_cifar10(args.data_dir, train=False, download=False)
    if args.offset + args.n > images.shape[0]:
        raise KepError(f"only {images.shape[0]} test images, asked for "
                       f"{args.offset}..{args.offset + args.n}")
    sel = slice(args.offset, args.offset + args.n)
    names = [f"image {i}" for i in range(args.offset, args.offset + args.n)]
    return names, quantize_input(kep, images[sel]), labels[sel]


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    args = _parser().parse_args(argv)
    setup_logging(verbosity(args))
    _check_args(args)
    from kep_hw.board.profiles import load_board
    from kep_train.export.kepfile import load_kep
    load_board(args.board)                      # an unknown board: one line, before all else
    kep = load_kep(args.model)
    names, x, labels = _inputs(args, kep)
    classes = class_names(kep)
    timeout = args.timeout if args.timeout is not None else (600.0 if args.sim else 10.0)
    rows = []

    def progress(n, r):
        rows.append(r)
        label = f"class {r.prediction}" + (f" ({classes[r.prediction]})" if classes else "")
        flag = "" if r.logits_equal else "  LOGITS DIFFER from golden"
        fm = "" if r.mismatched is None else f" last-conv values differing {r.mismatched}"
        if labels is None:
            print(f"{names[n]}: {label} logits {r.logits.tolist()} golden {r.golden} "
                  f"cycles {r.cycles}{fm}{flag}", flush=True)
        else:
            print(f"{names[n]}: label {int(labels[n])} board {r.prediction} golden "
                  f"{r.golden} cycles {r.cycles}{fm}{flag}", flush=True)

    t0 = time.monotonic()
    board = None
    try:
        board = open_board(args.port, sim=args.sim, model=kep, board=args.board,
                           pes=args.pes, lanes=args.lanes, baud=args.baud, timeout=timeout,
                           image_timeout=args.image_timeout,
                           weights="stream" if args.streamed else None,
                           clock_mhz=args.fmax, operand_reg=args.operand_reg,
                           dist_reg=args.dist_reg,
                           build_root=args.build_root)
        with board:
            if args.fmax is None and board.info["clk_khz"] == 0:
                raise KepError("the board reports a clock of 0 kHz in its INFO frame; give "
                               "the clock with --fmax MHz")
            board.classify(x, progress=progress, fmap=args.fmap)
    except BoardTimeout as e:
        limit = (f", --image-timeout {board.link.image_timeout():.3g} s" if board is not None
                 else "")
        raise BoardTimeout(f"{e}; --timeout {timeout:g} s{limit}") from None
    seconds = time.monotonic() - t0
    info, timing = board.info, board.timing
    pes, px, n = board.pes, info["px"], len(rows)
    mismatched = [r.mismatched for r in rows if r.mismatched is not None]
    differ = [names[i] for i, r in enumerate(rows) if not r.logits_equal]
    disagree = [names[i] for i, r in enumerate(rows) if r.prediction != r.golden]
    fmax = timing.clock_mhz
    mean_cyc = timing.mean_cycles
    ideal = ideal_cycles([LayerShape.from_layer(cl) for cl in kep.conv_layers], pes)
    report = {
        "n": n, "mode": "streamed" if info["streamed"] else "embedded",
        "target": board.target, "board": load_board(args.board).name, "pes": pes, "px": px,
        "po": info["po"], "lanes": info["lanes"],
        **({"operand_reg": board.operand_reg} if board.operand_reg is not None else {}),
        **({"dist_reg": board.dist_reg} if board.dist_reg else {}),
        "classes": info["classes"], "head": "board" if info["classes"] else "host",
        "disagreements": disagree, "logits_differ": differ,
        "logits_equal": n - len(differ), "mismatched_values": mismatched or None,
        "bit_exact": not differ and not any(mismatched),
        "cycles": timing.cycles, "cycles_mean": mean_cyc,
        "images_per_second": timing.images_per_second,
        "overlapped_io": board.link.can_overlap(args.fmap),
        "ideal_cycles": ideal, "fmax_mhz": fmax,
        "latency_ms": mean_cyc / fmax / 1e3, "ideal_latency_ms": ideal / fmax / 1e3,
        "seconds": seconds, "environment": environment_info(),
    }
    report["images"] = [
        {"file" if labels is None else "image": names[i],
         **({} if labels is None else {"label": int(labels[i])}),
         "class": r.prediction, "class_name": classes[r.prediction] if classes else None,
         "logits": r.logits.tolist(), "golden": r.golden,
         "golden_logits": r.golden_logits.tolist(), "logits_equal": r.logits_equal,
         "cycles": r.cycles, **({} if r.mismatched is None else {"mismatched": r.mismatched})}
        for i, r in enumerate(rows)]
    if labels is None:
        print(f"{n} images: board and golden agree on {n - len(disagree)}"
              + (f"; disagreements: {disagree}" if disagree else ""))
    else:
        board_pred = torch.tensor([r.prediction for r in rows])
        golden = torch.tensor([r.golden for r in rows])
        report.update(offset=args.offset,
                      top1_board=float((board_pred == labels).float().mean()),
                      top1_golden=float((golden == labels).float().mean()))
        disagree = [args.offset + i for i, r in enumerate(rows) if r.prediction != r.golden]
        report["disagreements"] = disagree
        print(f"top-1 board {report['top1_board']:.2%}  golden {report['top1_golden']:.2%}  "
              f"on {n} images; disagreements: {len(disagree)} {disagree or ''}")
    print(f"logits equal to the golden model's on {n - len(differ)} of {n} images"
          + ("" if info["classes"] else " (head computed on the host)"))
    if mismatched:
        print(f"last conv output bit-exact on {mismatched.count(0)} of {len(mismatched)} images")
    share = f"{ideal / mean_cyc:.1%}" if mean_cyc else "n/a: the board counted 0 cycles"
    print(f"P={pes} ({info['po']} channels x {px} pixels), G={info['lanes']}, "
          f"{report['mode']} weights; cycles/image {mean_cyc:.0f} (ideal {ideal:.0f} = "
          f"non-zero MACs / P, {share}); at {fmax:g} MHz: {report['latency_ms']:.2f} ms/image "
          f"(ideal {report['ideal_latency_ms']:.2f} ms)")
    if timing.images_per_second:
        compute = (f"{1e3 / report['latency_ms']:.1f} images/s" if report["latency_ms"]
                   else "n/a")
        if args.sim:      # the simulator's pace, not the board's: benchmarks/throughput.py
            print(f"simulation: {timing.images_per_second:.2f} images/s of wall time "
                  f"({'overlapped' if report['overlapped_io'] else 'one at a time'}); the "
                  f"board computes {compute} at {fmax:g} MHz (UART excluded)")
        else:
            print(f"end to end: {timing.images_per_second:.1f} images/s over {n} images "
                  f"({'overlapped' if report['overlapped_io'] else 'one at a time'}, UART and "
                  f"host included; compute only: {compute})")
    if args.out:
        atomic_write_json(args.out, report)
    return 0 if not differ and not disagree and not any(mismatched) else 1


if __name__ == "__main__":
    raise SystemExit(main())
