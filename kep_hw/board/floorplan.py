# SPDX-License-Identifier: Apache-2.0
"""Where the engine's PEs sit: the ``MULT18X18D`` site of every PE's multiplier (a floorplan).

nextpnr-ecp5 places a cell whose ``BEL`` attribute names a site there (with user strength:
the placers never move it), and everything else around it. Without a floorplan the placer puts
the P multipliers on whatever DSP sites it likes: at P = 128 on the 85F (148-151 of its 156
sites used) the 16 PEs of one pixel group end up scattered over all three DSP rows, so each
copy of a pixel's window and of the weight indices is routed across the die.

The ``groups`` floorplan keeps every pixel group's Po multipliers on adjacent sites of one DSP
row, pixel groups in the order of the requantization unit's accumulator chain (a snake over
the rows: the first row left to right, the next right to left, ...), as many whole groups per
row as fit. The snake starts in the row nearest the die's centre, whose free sites come first
(the requantization unit's and the head's multipliers, which nextpnr places): pixel group 0,
whose accumulators the requantization lanes read directly (the other groups' reach them
through the chain), sits next to them. Sites are known per device (:data:`DSP_ROWS`); on a
device without a list, or where the groups do not fit, there is no floorplan
(:func:`pe_sites` returns ``None``).
"""

from __future__ import annotations

__all__ = ["FLOORPLANS", "DSP_ROWS", "dsp_rows", "pe_sites"]

#: ``--floorplan`` values: ``none`` (nextpnr chooses every site) or ``groups`` (above)
FLOORPLANS = ("none", "groups")

# the MULT18X18D sites of one DSP row of the LFE5U-85F, left to right, as (x, bel index):
# read off nextpnr-ecp5 (0.7+, chip database of prjtrellis) from a design of 156 registered
# multipliers placed on the 85k device; the three rows (y = 10, 34, 58) have the same columns
_ROW_85 = ((4, 0), (5, 1), (8, 4), (9, 5), (13, 0), (14, 1), (17, 4), (18, 5), (22, 0), (23, 1),
           (26, 4), (27, 5), (31, 0), (32, 1), (35, 4), (36, 5), (40, 0), (41, 1), (44, 4),
           (45, 5), (49, 0), (50, 1), (53, 4), (54, 5), (58, 0), (59, 1), (62, 4), (63, 5),
           (69, 0), (70, 1), (73, 4), (74, 5), (78, 0), (79, 1), (82, 4), (83, 5), (87, 0),
           (88, 1), (91, 4), (92, 5), (96, 0), (97, 1), (100, 4), (101, 5), (105, 0), (106, 1),
           (109, 4), (110, 5), (114, 0), (115, 1), (118, 4), (119, 5))

#: DSP rows of each device with a known site list: device -> (rows: y -> ((x, bel index), ...))
DSP_ROWS: dict[str, dict[int, tuple[tuple[int, int], ...]]] = {
    "LFE5U-85F": {10: _ROW_85, 34: _ROW_85, 58: _ROW_85},
}
#: the tile grid's height of each device with a site list (its centre row is half of it)
DIE_ROWS = {"LFE5U-85F": 95}


def dsp_rows(device: str) -> list[list[str]] | None:
    """The ``MULT18X18D`` site names of ``device`` (``"X4/Y10/MULT18_0"``), one list per DSP
    row from the top, each from left to right; ``None`` for a device without a site list."""
    rows = DSP_ROWS.get(device)
    if rows is None:
        return None
    return [[f"X{x}/Y{y}/MULT18_{z}" for x, z in sites] for y, sites in sorted(rows.items())]


def _snake(device: str) -> list[list[str]]:
    """The DSP rows in the floorplan's order: from the row nearest the die's centre outwards
    (ties: the lower row first), the first left to right, the next right to left, ..."""
    rows = dsp_rows(device)
    centre = DIE_ROWS[device] / 2
    ys = [int(r[0].split("/")[1][1:]) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (abs(ys[i] - centre), -ys[i]))
    return [rows[i] if k % 2 == 0 else rows[i][::-1] for k, i in enumerate(order)]


def pe_sites(device: str, px: int, po: int, dsp_pes: int | None = None,
             floorplan: str = "groups") -> list[str] | None:
    """The site of PE ``q * po + o`` (pixel group ``q``, output channel ``o``) for the first
    ``dsp_pes`` PEs (those with a DSP multiplier; default all ``px * po``), or ``None`` where
    there is no floorplan: ``floorplan == "none"``, a device without a site list, or groups
    that do not fit whole into the rows.

    The groups take as few rows as they fit in, in the snake's order (:func:`_snake`); every
    row but the first is filled from its start, the first (the centre row) holds the groups
    that are left at its end, so its free sites (for the other multipliers) come first and
    group 0 sits next to them.

    Raises
    ------
    ValueError
        If ``floorplan`` is not one of :data:`FLOORPLANS`, or the sizes are out of range.
    """
    if floorplan not in FLOORPLANS:
        raise ValueError(f"floorplan must be one of {', '.join(FLOORPLANS)}, got {floorplan!r}")
    if px < 1 or po < 1:
        raise ValueError(f"px and po must be positive, got {px} and {po}")
    n = px * po if dsp_pes is None else dsp_pes
    if not 0 <= n <= px * po:
        raise ValueError(f"dsp_pes must be 0..{px * po}, got {dsp_pes}")
    if floorplan == "none" or device not in DSP_ROWS:
        return None
    groups = -(-n // po)                     # groups with a DSP multiplier (the last partly)
    rows = _snake(device)
    caps = [len(r) // po for r in rows]
    k = next((k for k in range(1, len(rows) + 1) if sum(caps[:k]) >= groups), None)
    if k is None:
        return None
    per_row = [0] * k
    left = groups
    for i in range(k - 1, 0, -1):            # the outer rows full, the rest in the first
        per_row[i] = min(caps[i], left - 1)
        left -= per_row[i]
    per_row[0] = left
    sites = []
    for i, row in enumerate(rows[:k]):
        first = len(row) - per_row[i] * po if i == 0 else 0
        sites += row[first:first + per_row[i] * po]
    return sites[:n]
