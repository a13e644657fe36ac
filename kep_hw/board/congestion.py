# SPDX-License-Identifier: Apache-2.0
"""Where nextpnr's router2 finds the design congested, by net and by part of the design.

With ``--router2-heatmap PREFIX`` router2 writes, after every iteration ``N``,
``PREFIX_congestion_by_net_N.csv`` (``net name,overuse``: how much of the wires the net uses
is shared with other nets) and ``PREFIX_congestion_by_coordinate_N.csv`` (the same per tile). ``python -m kep_hw.build ... --congestion`` asks for them (in
``OUT/build/congestion/``), prints the most congested parts of the design with every router
iteration and writes the last iteration's summary into ``report.json``; a build whose routing
does not converge (stopped by hand) is read afterwards with

    python -m kep_hw.board.congestion OUT/build [--iteration N] [--depth 3] [--top 12]

A net's part of the design is its hierarchical name cut after ``depth`` components, bit
indices, Yosys' suffixes and the numbers of register copies left out (``system.wt__data[3][8]``
-> ``system.wt__data``, ``system.engine.requant.r7_z0_TRELLIS_FF_Q_DI`` ->
``system.engine.requant``, ``system.engine.s2_win0_cp3`` -> ``system.engine.s2_win0``).

Measured with it (``docs/boards.md``): on the 85F at P = 64 the router's last overused wires
were the weight indices and the window register that fan out to the operand multiplexers.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from pathlib import Path

from kep_common.errors import KepError, cli_errors

__all__ = ["HEATMAP_DIR", "HEATMAP_PREFIX", "heatmap_files",
           "read_by_net", "design_part", "summarize", "summarize_folder", "main"]

#: folder (inside the build folder) and file prefix of router2's heatmaps
HEATMAP_DIR = "congestion"
HEATMAP_PREFIX = "router2"

_NET_CSV = re.compile(r"_congestion_by_net_(\d+)\.csv$")
_SUFFIX = re.compile(r"(_(TRELLIS|LUT4|CCU2C|DP16KD|MULT18X18D|PFUMX|L6MUX)\w*)$")


def heatmap_files(folder: Path, prefix: str = HEATMAP_PREFIX) -> dict[int, Path]:
    """``{iteration: by-net CSV}`` of router2's heatmaps in ``folder``."""
    out = {}
    for p in Path(folder).glob(f"{prefix}_congestion_by_net_*.csv"):
        m = _NET_CSV.search(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def read_by_net(path: Path) -> list[tuple[str, int]]:
    """``[(net, overuse)]`` of one by-net CSV, the most congested first; a malformed row is
    one :class:`KepError` naming the file and the row."""
    rows = []
    try:
        with open(path, newline="") as f:
            for i, row in enumerate(csv.reader(f), 1):
                if not row or not "".join(row).strip():
                    continue
                try:
                    name, value = ",".join(row[:-1]), int(row[-1])
                except ValueError:
                    raise KepError(f"{path}: row {i} is not 'net,overuse': {row[:3]!r}") \
                        from None
                if len(row) < 2 or value < 0:
                    raise KepError(f"{path}: row {i} is not 'net,overuse': {row[:3]!r}")
                rows.append((name, value))
    except OSError as e:
        raise KepError(f"cannot read {path} ({e.strerror or e})") from None
    rows.sort(key=lambda t: (-t[1], t[0]))
    return rows


def design_part(net: str, depth: int = 3) -> str:
    """The part of the design a net belongs to: its name cut after ``depth`` dotted
    components, without bit indices and Yosys' cell suffixes."""
    parts = net.split(".")[:depth]
    last = re.sub(r"\[.*$", "", parts[-1])
    last = re.sub(r"_cp\d+$", "", _SUFFIX.sub("", last))    # fanout.copies' registers
    return ".".join(parts[:-1] + [last])


def summarize(nets: list[tuple[str, int]], *, depth: int = 3, top: int = 10) -> dict:
    """The congestion of one iteration: total overuse, the nets with any, the ``top`` parts of
    the design by their share of the overuse, and the ``top`` nets."""
    total = sum(v for _, v in nets)
    parts = Counter()
    for name, v in nets:
        parts[design_part(name, depth)] += v
    return {
        "overuse": total, "nets": sum(1 for _, v in nets if v > 0),
        "parts": [{"part": k, "overuse": v, "share": round(v / total, 4) if total else 0.0}
                  for k, v in parts.most_common(top)],
        "top_nets": [{"net": k, "overuse": v} for k, v in nets[:top]],
    }


def summarize_folder(folder: Path, *, iteration: int | None = None, depth: int = 3,
                     top: int = 10, prefix: str = HEATMAP_PREFIX) -> dict | None:
    """:func:`summarize` of iteration ``iteration`` (default: the last one) of the heatmaps in
    ``folder``, with ``"iteration"``; ``None`` if the folder holds no heatmap."""
    files = heatmap_files(folder, prefix)
    if not files:
        return None
    it = max(files) if iteration is None else iteration
    if it not in files:
        raise KepError(f"{folder}: no heatmap of router2 iteration {it} (there are "
                       f"{min(files)}..{max(files)})")
    return {"iteration": it, **summarize(read_by_net(files[it]), depth=depth, top=top)}


def describe(summary: dict, n: int = 3) -> str:
    """One line: the ``n`` most congested parts with their shares."""
    parts = ", ".join(f"{p['part']} {100 * p['share']:.0f} %" for p in summary["parts"][:n])
    return f"overuse {summary['overuse']} on {summary['nets']} nets; most: {parts or '-'}"


def _folder(path: Path) -> Path:
    """The heatmap folder of a build folder (``OUT/build``), of ``OUT``, or itself."""
    path = Path(path)
    for cand in (path / HEATMAP_DIR, path / "build" / HEATMAP_DIR, path):
        if heatmap_files(cand):
            return cand
    raise KepError(f"no router2 heatmap under {path} (build with --congestion; the files are "
                   f"{HEATMAP_DIR}/{HEATMAP_PREFIX}_congestion_by_net_N.csv in the build "
                   "folder)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kep_hw.board.congestion",
        description="Where router2 found the design congested: the parts of the design and "
                    "the nets with the most overused wires at one iteration (from the "
                    "heatmaps of a build made with --congestion).")
    p.add_argument("build", help="the build's output folder (OUT), OUT/build, or the heatmap "
                                 "folder itself")
    p.add_argument("--iteration", type=int, default=None,
                   help="router2 iteration (default: the last one written)")
    p.add_argument("--depth", type=int, default=3,
                   help="dotted name components that name a part of the design (default 3)")
    p.add_argument("--top", type=int, default=12, help="parts and nets shown (default 12)")
    return p


@cli_errors
def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if a.depth < 1 or a.top < 1:
        raise KepError("--depth and --top must be at least 1")
    folder = _folder(Path(a.build))
    s = summarize_folder(folder, iteration=a.iteration, depth=a.depth, top=a.top)
    iters = sorted(heatmap_files(folder))
    print(f"router2 iteration {s['iteration']} (of {iters[0]}..{iters[-1]} in {folder}): "
          f"overuse {s['overuse']} on {s['nets']} nets")
    print(f"\n{'share':>6}  {'overuse':>8}  part of the design")
    for p in s["parts"]:
        print(f"{100 * p['share']:5.1f} %  {p['overuse']:8d}  {p['part']}")
    print(f"\n{'overuse':>8}  net")
    for n in s["top_nets"]:
        print(f"{n['overuse']:8d}  {n['net']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
