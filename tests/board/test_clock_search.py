# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_hw.build --freq auto``: nextpnr's critical-path report, the clocks a board
accepts, the choice of the next clock, the design key, and the resumable search with the tools
replaced by a stand-in (``_run_tools`` monkeypatched: no real build)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kep_common.errors import KepError
from kep_hw.board import build
from kep_hw.board.build import describe_path, parse_nextpnr_report
from kep_hw.board.clock_search import (TryStore, acceptable_clocks, design_key, next_clock,
                                       try_folder_name)
from kep_hw.board.pll import ecp5_pll_params
from kep_hw.board.profiles import load_board
from kep_hw.board.toolchain import TOOLS
from kep_hw.gateware.uart import uart_divisor

DATA = Path(__file__).parent / "data"
#: a real nextpnr-ecp5 0.11.1 report (--report, --detailed-timing-report) of the 12F smoke
#: build at 30 MHz, trimmed: the three critical paths whole, one net timing, four cell types
REAL_REPORT = DATA / "nextpnr_report_12f.json"


def _run(argv):
    try:
        return build.main(argv)
    except SystemExit as e:
        return e.code


# --- nextpnr's JSON report ---------------------------------------------------------------

def test_real_report_worst_paths():
    report = json.loads(REAL_REPORT.read_text())
    paths = parse_nextpnr_report(report)
    assert [(p["from_clock"], p["to_clock"]) for p in paths] == [
        ("posedge $glbnet$clk", "posedge $glbnet$clk"),       # the core clock first
        ("posedge $glbnet$clk", "<async>"),                   # then cross-domain, worst first
        ("<async>", "posedge $glbnet$clk")]
    worst = paths[0]
    assert worst["from"] == {"cell": "system.buffers.act0b.0.0", "port": "DOA5"}
    assert worst["to"] == {"cell": "system.engine.requant.r2_pr0_TRELLIS_FF_Q", "port": "DI"}
    # nextpnr's own text log of this run: "11.33 ns logic, 9.90 ns routing", total 21.23
    assert worst["total_ns"] == pytest.approx(21.234, abs=1e-3)
    assert worst["logic_ns"] == pytest.approx(11.33, abs=0.01)
    assert worst["routing_ns"] == pytest.approx(9.90, abs=0.01)
    assert worst["logic_levels"] == 7          # 4 LUT4s, the DSP, two carry cells
    # the report's own fmax is the inverse of the worst path of the core clock
    achieved = report["fmax"]["$glbnet$clk"]["achieved"]
    assert 1000.0 / worst["total_ns"] == pytest.approx(achieved, rel=1e-4)
    segs = worst["segments"]
    assert [(s["type"], s["delay_ns"]) for s in segs] == [
        ("clk-to-q", 5.609), ("logic", 3.927), ("routing", 3.153)]
    assert segs[1]["to"]["port"] == "P12" and "MULT18X18D" in segs[1]["to"]["cell"]
    assert segs[2]["net"] == "system.engine.requant.r2_pr0_TRELLIS_FF_Q_DI_CCU2C_S1_A1[12]"
    assert "net" not in segs[0]
    assert paths[1]["total_ns"] == pytest.approx(5.645, abs=1e-3)
    assert paths[1]["logic_levels"] == 0 and paths[2]["routing_ns"] == pytest.approx(0.94)


def test_longest_nets_of_the_detailed_net_timings():
    from kep_hw.board.build import longest_nets

    def net(name, *delays):
        return {"net": name, "driver": name + "_ff", "port": "Q", "event": "posedge clk",
                "endpoints": [{"cell": f"c{i}", "port": "A", "event": "posedge clk",
                               "delay": [d - 0.1, d]} for i, d in enumerate(delays)]}

    report = {"detailed_net_timings": [
        net("system.engine.s2_idx_cp3[7]", 1.0, 9.5, 2.0),
        net("system.engine.s2_idx_cp4[1]", 6.0),
        net("system.engine.s1w_win[3]", 12.25, 0.5),
        net("system.engine.requant.r0_ptr", 3.0),
        {"net": "const", "endpoints": []},
    ]}
    got = longest_nets(report, n=3, depth=3)
    assert [(x["net"], x["max_ns"], x["fanout"]) for x in got["nets"]] == [
        ("system.engine.s1w_win[3]", 12.25, 2), ("system.engine.s2_idx_cp3[7]", 9.5, 3),
        ("system.engine.s2_idx_cp4[1]", 6.0, 1)]
    assert got["nets"][0]["driver"] == "system.engine.s1w_win[3]_ff"
    # parts by their longest net; nets over half of the longest (6.125 ns) counted
    assert got["parts"] == [
        {"part": "system.engine.s1w_win", "max_ns": 12.25, "nets": 1},
        {"part": "system.engine.s2_idx", "max_ns": 9.5, "nets": 1},
        {"part": "system.engine.requant", "max_ns": 3.0, "nets": 0}]
    real = longest_nets(json.loads(REAL_REPORT.read_text()))
    assert real["nets"] == [{"net": "o_TRELLIS_FF_Q_DI", "driver": "o_TRELLIS_FF_Q_DI_LUT4_Z",
                             "fanout": 1, "max_ns": 3.533}]
    assert longest_nets({"critical_paths": []}) == {"nets": [], "parts": []}


def _seg(kind, delay, cell, port="Z", net=None):
    seg = {"type": kind, "delay": delay, "from": {"cell": cell, "port": "A", "loc": [1, 2]},
           "to": {"cell": cell, "port": port, "loc": [1, 2]}}
    if net:
        seg["net"] = net
    return seg


HAND_REPORT = {
    "fmax": {"clk_a": {"achieved": 100.0, "constraint": 50.0}},
    "critical_paths": [
        {"from": "<async>", "to": "posedge clk_a", "path": [
            _seg("source", 0.0, "pin"), _seg("routing", 12.5, "ff0", net="n_pin")]},
        {"from": "posedge clk_a", "to": "posedge clk_a", "path": [
            _seg("clk-to-q", 0.5, "ff1", "Q"), _seg("routing", 2.0, "lut1", net="n1"),
            _seg("logic", 0.25, "lut1"), _seg("routing", 1.0, "lut2", net="n2"),
            _seg("logic", 0.25, "lut2"), _seg("routing", 4.0, "ff2", "DI", net="n3"),
            _seg("setup", 0.1, "ff2", "DI")]},
        {"from": "posedge clk_b", "to": "posedge clk_b", "path": [
            _seg("clk-to-q", 0.5, "ff3", "Q"), _seg("routing", 9.5, "ff4", "DI", net="n4")]},
    ]}


def test_hand_written_report():
    paths = parse_nextpnr_report(HAND_REPORT)
    # within a clock domain first (by total delay), the cross-domain one last
    assert [p["total_ns"] for p in paths] == [10.0, 8.1, 12.5]
    a = paths[1]
    assert (a["from"], a["to"]) == ({"cell": "ff1", "port": "A"}, {"cell": "ff2", "port": "DI"})
    assert (a["logic_ns"], a["routing_ns"], a["logic_levels"]) == (1.1, 7.0, 2)
    assert [s["net"] for s in a["segments"]] == ["n3", "n1", "n2"]
    assert [p["total_ns"] for p in parse_nextpnr_report(HAND_REPORT, n=2)] == [10.0, 8.1]
    assert len(parse_nextpnr_report(HAND_REPORT, segments=1)[1]["segments"]) == 1
    assert parse_nextpnr_report({}) == [] and parse_nextpnr_report({"critical_paths": []}) == []
    assert describe_path(a) == ("ff1.A -> ff2.DI: 8.10 ns = 1.10 logic + 7.00 routing, "
                                "2 logic levels")
    assert describe_path(paths[2]).startswith("pin.A -> ff0.Z (<async> -> posedge clk_a): 12.50")


# --- the clocks a board accepts and the next one to try ------------------------------------

def test_acceptable_clocks_pll_exact_and_uart():
    clocks = acceptable_clocks(25.0, 3_000_000)
    assert clocks == sorted(clocks) and 10.0 <= clocks[0] and clocks[-1] <= 200.0
    # 25 MHz / 3 Mbaud between 30 and 50 MHz: 40 is refused by the UART (off by 2.6 %),
    # 47.917 (25 / 12 * 23) by the PLL's phase detector (2.08 MHz < 3.125 MHz)
    assert [c for c in clocks if 30 <= c <= 50] == [
        30.0, 33.333333, 35.714286, 39.285714, 41.666667, 45.0, 45.833333, 50.0]
    for f in clocks:
        assert ecp5_pll_params(25.0, f)["fout"] == pytest.approx(f, abs=1e-6)
        uart_divisor(f * 1e6, 3_000_000)
    # at 115,200 baud the UART takes every one: all 25 / CLKI_DIV * CLKFB_DIV with CLKI_DIV
    # 1-8 (PFD >= 3.125 MHz) in 30-50 MHz (some CLKOP_DIV puts each VCO in 400-800 MHz)
    assert acceptable_clocks(25.0, 115_200, lo=30.0, hi=50.0) == [
        30.0, 31.25, 32.142857, 33.333333, 34.375, 35.0, 35.714286, 37.5, 39.285714, 40.0,
        40.625, 41.666667, 42.857143, 43.75, 45.0, 45.833333, 46.428571, 46.875, 50.0]


def _t(freq, fmax, seed=1, met=None):
    return {"freq_pll_mhz": freq, "seed": seed, "fmax_mhz": fmax,
            "timing_met": (fmax is not None and fmax >= freq) if met is None else met}


B12 = load_board("ulx3s-12f")


@pytest.mark.parametrize("tries,seeds,expected", [
    # met at 30 with fmax 47.09: up to the highest acceptable clock below it
    ([_t(30, 47.09)], (1,), (45.833333, 1)),
    # missed at 45.833 (fmax 44.9): down below that fmax, above the clock that met
    ([_t(30, 47.09), _t(45.833333, 44.9)], (1,), (41.666667, 1)),
    # with seeds: the same clock with the next seed first
    ([_t(30, 47.09), _t(45.833333, 44.9)], (1, 2), (45.833333, 2)),
    ([_t(30, 47.09), _t(45.833333, 44.9), _t(45.833333, 45.2, seed=2)], (1, 2), (45.0, 1)),
    ([_t(30, 47.09), _t(45.833333, 44.9, seed=2)], (2, 7), (45.833333, 7)),
    # met and nothing acceptable between it and its fmax: done
    ([_t(30, 47.09), _t(45.833333, 46.0)], (1,), None),
    # the first try missed: straight down
    ([_t(50, 44.0)], (1,), (41.666667, 1)),
    # never back to or above a clock where every seed missed, whatever a later fmax says
    ([_t(50, 44.0), _t(41.666667, 52.0)], (1,), (45.833333, 1)),
    ([_t(45.833333, 44.0), _t(41.666667, 52.0)], (1,), (45.0, 1)),
    # fmax below every acceptable clock, or none reported: done
    ([_t(30, 9.5)], (1,), None),
    ([_t(30, None, met=None)], (1,), None),
    ([], (1,), None),
])
def test_next_clock(tries, seeds, expected):
    got = next_clock(B12, 3_000_000, tries, seeds=seeds)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got[1] == expected[1]
        assert got[0] == pytest.approx(expected[0], abs=1e-6)


def test_next_clock_follows_the_baud_rate():
    # the highest PLL clock at most 47.09 MHz is 46.875 (25 / 8 * 15): fine at 115,200 baud,
    # refused at 3 Mbaud (divisor 16, 2.3 % off)
    assert next_clock(B12, 115_200, [_t(30, 47.09)])[0] == pytest.approx(46.875)
    assert next_clock(B12, 3_000_000, [_t(30, 47.09)])[0] == pytest.approx(45.833333)


def test_try_folder_names():
    assert try_folder_name(30.0, 1) == "30-s1"
    assert try_folder_name(45.833333, 12) == "45.833-s12"
    assert try_folder_name(41.5, 0) == "41.5-s0"


# --- what makes a try the same try ----------------------------------------------------------

FILES = {"kep_top.il": 'attribute \\src "/x/engine.py:75"\ncell $add $1\nend\n',
         "build_kep_top.json": '{"commands": [["nextpnr-ecp5", "--seed", "1"]]}'}


def test_design_key():
    key = design_key(FILES, freq_mhz=30.0, seed=1, tools={"yosys": ["p", "pypi", "0.1"]})
    same = design_key(dict(FILES), freq_mhz=30.0, seed=1, tools={"yosys": ["p", "pypi", "0.1"]})
    assert key == same and re.fullmatch(r"[0-9a-f]{64}", key)
    moved = dict(FILES, **{"kep_top.il": FILES["kep_top.il"].replace(":75", ":94")})
    assert design_key(moved, freq_mhz=30.0, seed=1,
                      tools={"yosys": ["p", "pypi", "0.1"]}) == key    # a line moved: same
    others = [
        design_key(dict(FILES, **{"kep_top.il": FILES["kep_top.il"].replace("$add", "$sub")}),
                   freq_mhz=30.0, seed=1, tools={"yosys": ["p", "pypi", "0.1"]}),
        design_key(dict(FILES, **{"build_kep_top.json": FILES["build_kep_top.json"] + " "}),
                   freq_mhz=30.0, seed=1, tools={"yosys": ["p", "pypi", "0.1"]}),
        design_key(FILES, freq_mhz=30.000001, seed=1, tools={"yosys": ["p", "pypi", "0.1"]}),
        design_key(FILES, freq_mhz=30.0, seed=2, tools={"yosys": ["p", "pypi", "0.1"]}),
        design_key(FILES, freq_mhz=30.0, seed=1, tools={"yosys": ["p", "pypi", "0.2"]}),
    ]
    assert len(set(others + [key])) == 6


def test_try_store(tmp_path):
    path = tmp_path / "clock_search.json"
    store = TryStore(path)
    assert store.get("k1") is None and not path.exists()
    store.put("k1", {"seed": 1, "timing_met": True})
    assert TryStore(path).get("k1") == {"seed": 1, "timing_met": True}
    assert json.loads(path.read_text())["format"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["clock_search.json"]     # no temp left
    for bad in ("{not json", '{"format": 99, "tries": {}}', '{"format": 1, "tries": [1]}',
                "[]"):
        path.write_text(bad)
        with pytest.raises(KepError, match="not a clock search record.*delete it"):
            TryStore(path)


# --- the search, tools replaced by a stand-in -----------------------------------------------

@pytest.fixture
def no_tool_vars(monkeypatch):
    for tool in TOOLS.values():
        monkeypatch.delenv(tool.env, raising=False)


class FakeTools:
    """``_run_tools`` stand-in: writes what the tools would (nextpnr's log with its fmax after
    placement and routing, Yosys' stats, the real report fixture, a bitstream) for an fmax
    that depends on the try's clock and seed (``fmax[(folder clock, seed)]``)."""

    def __init__(self, fmax: dict, interrupt_at: int | None = None):
        self.fmax, self.interrupt_at, self.calls = fmax, interrupt_at, []

    def __call__(self, commands, *, build_dir, env, progress, fail, heatmaps=None):
        name = build_dir.parent.name                          # "<MHz>-s<seed>"
        self.calls.append(name)
        if len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        mhz, seed = name.rsplit("-s", 1)
        # the nextpnr command line the build plan holds (the stand-in never runs it)
        pnr = next(argv for stage, argv in commands if stage.startswith("place"))
        assert pnr[pnr.index("--seed") + 1] == seed
        fmax = self.fmax[(mhz, int(seed))]
        target = float(mhz)
        verdict = "PASS" if fmax >= target else "FAIL"
        (build_dir / "kep_top.tim").write_text(
            f"Info: Max frequency for clock '$glbnet$clk': {fmax + 1.5:.2f} MHz (PASS at "
            f"{target:.2f} MHz)\nInfo: Routing..\n"
            f"Info: Max frequency for clock '$glbnet$clk': {fmax:.2f} MHz ({verdict} at "
            f"{target:.2f} MHz)\n")
        (build_dir / "kep_top.rpt").write_text("Number of cells: 3\n     LUT4  3\n\n")
        (build_dir / "kep_top.report.json").write_text(REAL_REPORT.read_text())
        (build_dir / "kep_top.bit").write_bytes(name.encode() * 10)


#: fmax after routing of each try: 30 meets (47.09) -> 45.833 misses (44.9) -> 41.667 meets
#: (45.2) -> 45.0 meets (45.1) -> nothing acceptable in (45.0, 45.1]: done
FMAX = {("30", 1): 47.09, ("45.833", 1): 44.9, ("41.667", 1): 45.2, ("45", 1): 45.1}
ARGS = ["--board", "ulx3s-12f", "--pes", "8", "--freq", "auto", "--freq-start", "30", "--quiet"]


def _search(out, fake, monkeypatch, *extra):
    monkeypatch.setattr(build, "_run_tools", fake)
    return _run(ARGS + ["--out", str(out), *extra])


def _tries(out):
    return json.loads((out / "report.json").read_text())["clock_search"]["tries"]


def test_search_runs_resumes_and_continues(tmp_path, capsys, monkeypatch, no_tool_vars):
    out = tmp_path / "out"
    fake = FakeTools(FMAX)
    assert _search(out, fake, monkeypatch, "--max-tries", "3") == 0
    assert fake.calls == ["30-s1", "45.833-s1", "41.667-s1"]
    rep = json.loads((out / "report.json").read_text())
    search = rep["clock_search"]
    assert [(t["folder"], t["fmax_mhz"], t["timing_met"], t["resumed"])
            for t in search["tries"]] == [("tries/30-s1", 47.09, True, False),
                                          ("tries/45.833-s1", 44.9, False, False),
                                          ("tries/41.667-s1", 45.2, True, False)]
    assert [t["fmax_placed_mhz"] for t in search["tries"]] == [48.59, 46.4, 46.7]
    assert search["tries"][1]["freq_pll_mhz"] == pytest.approx(25 / 6 * 11)
    assert search["chosen"] == "tries/41.667-s1" and search["stopped"] == \
        "--max-tries 3 reached"
    # both are rounded to 0.1 s, the tries' sum from rounded tries: 0.05 s of slack per try
    assert search["seconds"] + 0.05 * len(search["tries"]) >= search["tries_seconds"] > 0
    # the result is the fastest try that met timing: its report, bitstream and summary
    assert rep["freq_pll_mhz"] == pytest.approx(41.666667) and rep["timing_met"] is True
    assert rep["seed"] == 1 and rep["uart_divisor"] == 14
    assert rep["worst_paths"][0]["total_ns"] == pytest.approx(21.234, abs=1e-3)
    assert (out / "kep_top.bit").read_bytes() == b"41.667-s1" * 10
    summary = (out / "summary.txt").read_text()
    assert "worst  system.buffers.act0b.0.0.DOA5 -> system.engine.requant.r2_pr0_TRELLIS_FF_Q" \
        ".DI: 21.23 ns = 11.33 logic + 9.90 routing, 7 logic levels" in summary
    assert "search 3 tries (0 done before)" in summary and "result: tries/41.667-s1" in summary
    for name in fake.calls:
        assert json.loads((out / "tries" / name / "report.json").read_text())["seed"] == 1
    capsys.readouterr()

    # the same command again: every try was done before, nothing is built
    again = FakeTools(FMAX)
    assert _search(out, again, monkeypatch, "--max-tries", "3") == 0
    assert again.calls == []
    tries = _tries(out)
    assert [t["resumed"] for t in tries] == [True] * 3
    assert [(t["folder"], t["fmax_mhz"], t["seconds"]) for t in tries] == \
        [(t["folder"], t["fmax_mhz"], t["seconds"]) for t in search["tries"]]
    assert "search 3 tries (3 done before)" in (out / "summary.txt").read_text()

    # more tries allowed: it goes on where it stopped, up to 45 MHz, then has no faster clock
    more = FakeTools(FMAX)
    assert _search(out, more, monkeypatch, "--max-tries", "5") == 0
    assert more.calls == ["45-s1"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["clock_search"]["stopped"] == "no faster clock to try"
    assert rep["clock_search"]["chosen"] == "tries/45-s1" and rep["freq_pll_mhz"] == 45.0
    assert (out / "kep_top.bit").read_bytes() == b"45-s1" * 10
    assert len(json.loads((out / "clock_search.json").read_text())["tries"]) == 4

    # another design input (here the router in the build script): nothing is reused
    other = FakeTools(FMAX)
    assert _search(out, other, monkeypatch, "--max-tries", "2", "--router", "router1") == 0
    assert other.calls == ["30-s1", "45.833-s1"]


def test_interrupted_search_loses_only_the_running_try(tmp_path, capsys, monkeypatch,
                                                      no_tool_vars):
    out = tmp_path / "out"
    assert _search(out, FakeTools(FMAX, interrupt_at=2), monkeypatch, "--max-tries", "3") == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (out / "report.json").exists()
    assert len(json.loads((out / "clock_search.json").read_text())["tries"]) == 1
    resumed = FakeTools(FMAX)
    assert _search(out, resumed, monkeypatch, "--max-tries", "3") == 0
    assert resumed.calls == ["45.833-s1", "41.667-s1"]
    assert [t["resumed"] for t in _tries(out)] == [True, False, False]


def test_seeds_are_tried_before_going_down(tmp_path, monkeypatch, no_tool_vars):
    fmax = {**FMAX, ("45.833", 2): 44.0, ("45.833", 3): 46.1}
    fake = FakeTools(fmax)
    assert _search(tmp_path, fake, monkeypatch, "--seeds", "1,2,3") == 0
    # 45.833 misses with seeds 1 and 2, meets with 3 (46.1); nothing faster up to 46.1
    assert fake.calls == ["30-s1", "45.833-s1", "45.833-s2", "45.833-s3"]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["clock_search"]["chosen"] == "tries/45.833-s3" and rep["seed"] == 3


def test_no_try_meets_timing(tmp_path, monkeypatch, one_line_error, no_tool_vars):
    (tmp_path / "kep_top.bit").write_bytes(b"stale")
    fake = FakeTools({("45", 1): 40.1, ("39.286", 1): 38.0, ("35.714", 1): 35.0})
    line = one_line_error(_search(tmp_path, fake, monkeypatch, "--freq-start", "45",
                                  "--max-tries", "3"))
    assert fake.calls == ["45-s1", "39.286-s1", "35.714-s1"]
    assert line.startswith("error: timing missed in all 3 tries of the clock search (best: "
                           "fmax 40.10 MHz at 45.000 MHz)")
    assert not (tmp_path / "kep_top.bit").exists()            # no stale bitstream posing
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["clock_search"]["chosen"] is None and rep["timing_met"] is False


def test_auto_dry_run_writes_the_first_try_with_the_report_options(tmp_path, capsys,
                                                                   no_tool_vars):
    assert _run(["--board", "ulx3s-12f", "--freq", "auto", "--freq-start", "45", "--seeds",
                 "4,5", "--out", str(tmp_path), "--dry-run"]) == 0
    assert "the tool inputs of its first try (45 MHz, seed 4)" in capsys.readouterr().err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["status"] == "dry-run" and rep["freq_pll_mhz"] == 45.0 and rep["seed"] == 4
    plan = json.loads((tmp_path / "build" / "build_kep_top.json").read_text())
    pnr = next(argv for argv in plan["commands"] if argv[0] == "nextpnr-ecp5")
    assert pnr[pnr.index("--seed") + 1] == "4"
    assert pnr[pnr.index("--report") + 1] == "kep_top.report.json"
    assert "--detailed-timing-report" in pnr          # YoWASP's nextpnr 0.11 accepts it
    assert not (tmp_path / "tries").exists() and not (tmp_path / "clock_search.json").exists()
