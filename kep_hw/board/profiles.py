# SPDX-License-Identifier: Apache-2.0
"""Board profiles: one TOML file per board in the repository's ``boards/`` folder, installed as the data package ``kep_hw.boards``.

A profile names the amaranth-boards platform class, the oscillator and default core clock, the
UART (resource, optional TX-enable, baud rate, or extra pins when the board has no UART
resource), the resource budget as nextpnr counts it (LUT4s, MULT18X18D DSPs, DP16KD block RAMs)
and defaults (PE count, weight mode). Adding a board = adding a TOML file; see
``docs/boards.md``.
"""

from __future__ import annotations

import importlib
import importlib.resources
from dataclasses import dataclass, field

from kep_common.errors import KepError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["BoardProfile", "ALIASES", "list_boards", "load_board", "parse_profile"]

ALIASES = {"ulx3s": "ulx3s-85f", "colorlight": "colorlight-5a75b", "orangecrab": "orangecrab-25f"}
WEIGHT_MODES = ("embedded", "stream")


@dataclass(frozen=True)
class BoardProfile:
    """One board.

    Attributes mirror the TOML keys: ``name``, ``description``, ``platform`` (``module:Class``),
    ``device``, ``program`` (openFPGALoader arguments before the bitstream), ``clk_resource``,
    ``clk_mhz`` (oscillator), ``default_mhz`` (core clock), ``uart`` (dict), ``luts``, ``dsps``,
    ``brams``, ``default_pes``, ``weights`` (``"embedded"`` or ``"stream"``), and the optional
    ``default_px`` (``[defaults] px``, output pixels per engine block, 1) and
    ``default_lanes`` (``[defaults] lanes``, G, 4).
    """
    name: str
    description: str
    platform: str
    device: str
    program: tuple[str, ...]
    clk_resource: str
    clk_mhz: float
    default_mhz: float
    uart: dict = field(default_factory=dict)
    luts: int = 0
    dsps: int = 0
    brams: int = 0
    default_pes: int = 16
    weights: str = "stream"
    default_px: int = 1
    default_lanes: int = 4

    @property
    def baud(self) -> int:
        """UART baud rate on the board."""
        return int(self.uart.get("baud", 115200))

    def platform_class(self):
        """Import and return the amaranth-boards platform class.

        Raises
        ------
        KepError
            If the module or class does not exist.
        """
        mod_name, _, cls_name = self.platform.partition(":")
        try:
            return getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as e:
            raise KepError(f"board {self.name!r}: cannot import platform {self.platform!r} "
                           f"({e})") from None

    def make_platform(self):
        """Instantiate the platform, adding the UART resource when the profile gives pins."""
        plat = self.platform_class()()
        if "rx_pin" in self.uart:
            from amaranth.build import Attrs
            from amaranth_boards.resources import UARTResource
            plat.add_resources([UARTResource(0, rx=self.uart["rx_pin"], tx=self.uart["tx_pin"],
                                             attrs=Attrs(IO_TYPE=self.uart.get("io_type",
                                                                               "LVCMOS33")))])
        return plat


def _require(data: dict, key: str, kind, where: str):
    if key not in data:
        raise KepError(f"board profile {where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise KepError(f"board profile {where}: {key!r} has the wrong type ({value!r})")
    return value


def parse_profile(text: str, where: str = "<text>") -> BoardProfile:
    """Parse one TOML profile.

    Parameters
    ----------
    text : str
        TOML text.
    where : str
        Name used in error messages.

    Returns
    -------
    BoardProfile

    Raises
    ------
    KepError
        On invalid TOML, a missing key or a value of the wrong type or range.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise KepError(f"board profile {where}: invalid TOML ({e})") from None
    clock = _require(data, "clock", dict, where)
    uart = _require(data, "uart", dict, where)
    budget = _require(data, "budget", dict, where)
    defaults = _require(data, "defaults", dict, where)
    prof = BoardProfile(
        name=_require(data, "name", str, where),
        description=data.get("description", ""),
        platform=_require(data, "platform", str, where),
        device=_require(data, "device", str, where),
        program=tuple(data.get("program", [])),
        clk_resource=_require(clock, "resource", str, where),
        clk_mhz=float(_require(clock, "freq_mhz", (int, float), where)),
        default_mhz=float(_require(clock, "default_mhz", (int, float), where)),
        uart=dict(uart),
        luts=_require(budget, "luts", int, where),
        dsps=_require(budget, "dsps", int, where),
        brams=_require(budget, "brams", int, where),
        default_pes=_require(defaults, "pes", int, where),
        weights=_require(defaults, "weights", str, where),
        default_px=defaults.get("px", 1),
        default_lanes=defaults.get("lanes", 4),
    )
    for key in ("px", "lanes"):
        v = defaults.get(key, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise KepError(f"board profile {where}: defaults.{key} must be a positive integer, "
                           f"got {v!r}")
    if prof.default_pes % prof.default_px or (prof.default_pes // prof.default_px) \
            % prof.default_lanes:
        raise KepError(f"board profile {where}: defaults.pes must be a multiple of px x lanes")
    if prof.weights not in WEIGHT_MODES:
        raise KepError(f"board profile {where}: weights must be one of {WEIGHT_MODES}, "
                       f"got {prof.weights!r}")
    if min(prof.luts, prof.dsps, prof.brams, prof.default_pes) <= 0 or prof.clk_mhz <= 0:
        raise KepError(f"board profile {where}: budget, pes and clock must be positive")
    _require(uart, "resource", str, where)
    return prof


def list_boards() -> list[str]:
    """Names of the packaged profiles (sorted)."""
    root = importlib.resources.files("kep_hw.boards")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_board(name: str) -> BoardProfile:
    """Load a packaged profile by name or alias (``ulx3s`` is the 85F).

    Raises
    ------
    KepError
        If no profile has that name.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in list_boards():
        raise KepError(f"unknown board {name!r}; known: {', '.join(list_boards())} "
                       f"(aliases: {', '.join(ALIASES)})")
    text = (importlib.resources.files("kep_hw.boards") / f"{key}.toml").read_text()
    return parse_profile(text, f"{key}.toml")
