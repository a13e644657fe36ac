# SPDX-License-Identifier: Apache-2.0
"""Board profiles: every packaged one loads; hostile or odd ones are refused in one line."""

from __future__ import annotations

import pytest

from kep_common.errors import KepError
from kep_hw.board.profiles import list_boards, load_board, parse_profile

GOOD = '''name = "t"
platform = "amaranth_boards.ulx3s:ULX3S_85F_Platform"
device = "LFE5U-85F"
program = ["-b", "ulx3s"]
[clock]
resource = "clk25"
freq_mhz = 25.0
default_mhz = 30.0
[uart]
resource = "uart"
baud = 1000000
[budget]
luts = 83640
dsps = 156
brams = 208
[defaults]
pes = 64
px = 4
lanes = 8
weights = "embedded"
'''


def test_packaged_profiles_load():
    names = list_boards()
    assert {"ulx3s-85f", "ulx3s-12f", "colorlight-5a75b"} <= set(names)
    for name in names:
        prof = load_board(name)
        assert prof.name == name and prof.baud >= 115200
        assert prof.platform_class().__name__.endswith("Platform")
    assert load_board("ulx3s").name == "ulx3s-85f"


def test_good_profile_parses():
    prof = parse_profile(GOOD, "t.toml")
    assert (prof.default_pes, prof.default_px, prof.default_lanes, prof.baud) == (64, 4, 8, 1000000)
    assert prof.default_operand_reg is False
    prof = parse_profile(GOOD.replace("lanes = 8", "lanes = 8\noperand_reg = true"), "t.toml")
    assert prof.default_operand_reg is True
    assert prof.placer == "heap"
    prof = parse_profile(GOOD.replace("lanes = 8", 'lanes = 8\nplacer = "static"'), "t.toml")
    assert prof.placer == "static"


@pytest.mark.parametrize("old, new, msg", [
    ("freq_mhz = 25.0", "freq_mhz = 0", "'freq_mhz' must be between"),
    ("freq_mhz = 25.0", "freq_mhz = -25.0", "'freq_mhz' must be between"),
    ("freq_mhz = 25.0", "freq_mhz = nan", "'freq_mhz' must be between"),
    ("freq_mhz = 25.0", "freq_mhz = inf", "'freq_mhz' must be between"),
    ("default_mhz = 30.0", "default_mhz = 1e9", "'default_mhz' must be between"),
    ("baud = 1000000", "baud = 0", "'baud' must be between"),
    ("baud = 1000000", "baud = -1", "'baud' must be between"),
    ("baud = 1000000", 'baud = "fast"', "'baud' has the wrong type"),
    ("baud = 1000000", "baud = 1e6", "'baud' has the wrong type"),
    ('program = ["-b", "ulx3s"]', 'program = "-b ulx3s"', "'program' has the wrong type"),
    ('program = ["-b", "ulx3s"]', "program = [1, 2]", "'program' must be a list of strings"),
    ("pes = 64", "pes = true", "'pes' has the wrong type"),
    ("pes = 64", "pes = 0", "'pes' must be between"),
    ("pes = 64", "pes = 1000000000", "'pes' must be between"),
    ("px = 4", "px = 3", "multiple of px x lanes"),
    ("lanes = 8", "lanes = -8", "'lanes' must be between"),
    ("dsps = 156", "dsps = 0", "'dsps' must be between"),
    ("lanes = 8", "lanes = 8\noperand_reg = 1", "'operand_reg' must be true or false"),
    ("lanes = 8", 'lanes = 8\noperand_reg = "yes"', "'operand_reg' must be true or false"),
    ('weights = "embedded"', 'weights = "flash"', "weights must be one of"),
    ("lanes = 8", 'lanes = 8\nplacer = "sa"', "placer must be one of"),
    ("lanes = 8", "lanes = 8\nplacer = 1", "'placer' has the wrong type"),
    ('device = "LFE5U-85F"', 'device = ""', "'device' must not be empty"),
    ('device = "LFE5U-85F"', 'devise = "LFE5U-85F"', "unknown key 'devise'"),
    ('resource = "uart"', 'resource = "uart"\nrx_pin = "N17"', "both rx_pin and tx_pin"),
    ('platform = "amaranth_boards.ulx3s:ULX3S_85F_Platform"', 'platform = "os"',
     "'platform' must be 'module:Class'"),
])
def test_bad_field(old, new, msg):
    assert old in GOOD
    with pytest.raises(KepError, match=msg):
        parse_profile(GOOD.replace(old, new, 1), "t.toml")


@pytest.mark.parametrize("platform", ["os:getpid", "builtins:dict", "no.such.module:X",
                                      "amaranth_boards.ulx3s:NoSuchPlatform"])
def test_platform_must_be_an_amaranth_platform(platform):
    prof = parse_profile(GOOD.replace("amaranth_boards.ulx3s:ULX3S_85F_Platform", platform), "t")
    with pytest.raises(KepError, match="not an Amaranth platform|cannot import platform"):
        prof.platform_class()


def test_deeply_nested_array_is_one_error():
    text = GOOD.replace('program = ["-b", "ulx3s"]', "program = " + "[" * 100000 + "]" * 100000)
    with pytest.raises(KepError, match="invalid TOML|'program'"):
        parse_profile(text, "t.toml")
