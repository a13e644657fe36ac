# SPDX-License-Identifier: Apache-2.0
"""The DSP floorplan of the engine's PEs (``--floorplan groups``): every pixel group on adjacent
sites of one row, groups in a snake, every site real and used once."""

from __future__ import annotations

import re

import pytest

from kep_hw.board.floorplan import FLOORPLANS, dsp_rows, pe_sites

DEV = "LFE5U-85F"


def _pos(site):
    x, y, z = re.fullmatch(r"X(\d+)/Y(\d+)/MULT18_(\d)", site).groups()
    return int(x), int(y), int(z)


def test_85f_has_three_rows_of_52_distinct_sites():
    rows = dsp_rows(DEV)
    assert [len(r) for r in rows] == [52, 52, 52]
    every = [s for r in rows for s in r]
    assert len(set(every)) == 156
    assert [_pos(r[0])[1] for r in rows] == [10, 34, 58]
    for r in rows:
        xs = [_pos(s)[0] for s in r]
        assert xs == sorted(xs) and len(set(xs)) == 52
        assert {_pos(s)[2] for s in r} == {0, 1, 4, 5}
    assert dsp_rows("LFE5U-25F") is None


def test_p128_groups_sit_together_in_a_snake():
    po, px = 16, 8
    sites = pe_sites(DEV, px, po)
    assert len(sites) == 128 and len(set(sites)) == 128
    rows = dsp_rows(DEV)
    order = {s: (r, k) for r, row in enumerate(rows) for k, s in enumerate(row)}
    groups = [[order[s] for s in sites[q * po:(q + 1) * po]] for q in range(px)]
    for q, g in enumerate(groups):
        assert len({r for r, _ in g}) == 1, f"group {q} spans rows"
        ks = sorted(k for _, k in g)
        assert ks == list(range(ks[0], ks[0] + po)), f"group {q} is not contiguous"
    # the centre row (y = 58) first, its two groups at its right end (its first 20 sites
    # free for the other multipliers), then y = 34 right to left, then y = 10 left to right
    assert [g[0][0] for g in groups] == [2, 2, 1, 1, 1, 0, 0, 0]
    assert sorted(groups[0])[0] == (2, 20) and sorted(groups[1])[-1] == (2, 51)
    assert groups[2][0] == (1, 51) and groups[4][-1] == (1, 4)
    assert groups[5][0] == (0, 0) and groups[7][-1] == (0, 47)
    # consecutive groups are neighbours: along a row, or at the row's turn
    assert groups[1][-1] == (2, 51) and groups[2][0] == (1, 51)


def test_pe_sites_without_a_floorplan_or_with_logic_multipliers():
    assert pe_sites(DEV, 8, 16, floorplan="none") is None
    assert pe_sites("LFE5U-12F", 4, 4) is None
    assert pe_sites(DEV, 8, 16, 120) == pe_sites(DEV, 8, 16)[:120]
    # P = 64: two rows; the centre row holds group 0 at its right end, y = 34 the others
    p64 = pe_sites(DEV, 4, 16)
    assert len(set(p64)) == 64 and p64[:16] == dsp_rows(DEV)[2][36:]
    assert all("/Y34/" in s for s in p64[16:])
    # ten groups of 16 do not fit whole into three rows of 52
    assert pe_sites(DEV, 10, 16) is None
    with pytest.raises(ValueError, match="floorplan"):
        pe_sites(DEV, 8, 16, floorplan="rows")
    with pytest.raises(ValueError, match="dsp_pes"):
        pe_sites(DEV, 8, 16, 129)
    assert FLOORPLANS == ("none", "groups")


def test_engine_refuses_more_sites_than_dsp_multipliers():
    from kep_hw.gateware.engine import Engine
    from kep_hw.gateware.params import EngineParams
    sites = pe_sites(DEV, 2, 8)
    Engine(EngineParams(pes=16, px=2), pe_sites=sites)
    with pytest.raises(ValueError, match="16 PE sites for 12 DSP multipliers"):
        Engine(EngineParams(pes=16, px=2, lut_pes=4), pe_sites=sites)
