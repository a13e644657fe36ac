# SPDX-License-Identifier: Apache-2.0
"""Board profiles: one TOML file per board in the repository's ``boards/`` folder, installed as
the data package ``kep_hw.boards`` (data, not code).

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

__all__ = ["BoardProfile", "ALIASES", "PLACERS", "list_boards", "load_board", "parse_profile"]

ALIASES = {"ulx3s": "ulx3s-85f", "colorlight": "colorlight-5a75b", "orangecrab": "orangecrab-25f"}
WEIGHT_MODES = ("embedded", "stream")
#: nextpnr-ecp5 placers a profile may choose (``[defaults] placer``)
PLACERS = ("heap", "static")


@dataclass(frozen=True)
class BoardProfile:
    """One board.

    Attributes mirror the TOML keys: ``name``, ``description``, ``platform`` (``module:Class``),
    ``device``, ``program`` (openFPGALoader arguments before the bitstream), ``clk_resource``,
    ``clk_mhz`` (oscillator), ``default_mhz`` (core clock), ``uart`` (dict), ``luts``, ``dsps``,
    ``brams``, ``default_pes``, ``weights`` (``"embedded"`` or ``"stream"``), and the optional
    ``default_px`` (``[defaults] px``, output pixels per engine block, 1),
    ``default_lanes`` (``[defaults] lanes``, G, 4), ``default_rq_lanes`` (``[defaults]
    rq_lanes``, the requantization lanes L, default G), ``default_lut_pes``
    (``[defaults] lut_pes``, PEs with a multiplier in logic, 0) and ``default_operand_reg``
    (``[defaults] operand_reg``, a register per PE before its multiplier, false), ``placer``
    (``[defaults] placer``, nextpnr's placer: ``"heap"`` or ``"static"``, heap) and
    ``default_seed`` (``[defaults] seed``, nextpnr's placement seed, 1: the seed whose build
    met the profile's clock).
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
    default_rq_lanes: int | None = None
    default_lut_pes: int = 0
    default_operand_reg: bool = False
    placer: str = "heap"
    default_seed: int = 1

    def rq_lanes_for(self, lanes: int) -> int:
        """The requantization lanes L of an engine with ``lanes`` = G: the profile's, when it
        divides G, else G."""
        L = self.default_rq_lanes
        return L if L is not None and lanes % L == 0 else lanes

    @property
    def baud(self) -> int:
        """UART baud rate on the board."""
        return int(self.uart.get("baud", 115200))

    def platform_class(self):
        """Import and return the amaranth-boards platform class.

        Only an Amaranth platform class is accepted (a subclass of
        :class:`amaranth.build.Platform`): a profile cannot make the toolkit call anything else.

        Raises
        ------
        KepError
            If the module or class does not exist or is no Amaranth platform.
        """
        from amaranth.build import Platform
        mod_name, _, cls_name = self.platform.partition(":")
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError, ValueError) as e:
            raise KepError(f"board {self.name!r}: cannot import platform {self.platform!r} "
                           f"({e})") from None
        if not (isinstance(cls, type) and issubclass(cls, Platform)):
            raise KepError(f"board {self.name!r}: platform {self.platform!r} is not an Amaranth "
                           f"platform class")
        return cls

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


#: Upper bounds of a profile's numbers (far above any ECP5 board; they catch typos and junk).
_MAX_MHZ = 1000.0
_MAX_BAUD = 50_000_000
_MAX_COUNT = 10_000_000
_MAX_PES = 4096


def _require(data: dict, key: str, kind, where: str, *, optional=None):
    """``data[key]`` checked to be of ``kind`` (bool never counts as a number); ``optional``
    is returned when the key is absent (``None``: the key is required)."""
    if key not in data:
        if optional is not None:
            return optional
        raise KepError(f"board profile {where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise KepError(f"board profile {where}: {key!r} has the wrong type ({value!r})")
    return value


def _number(data: dict, key: str, where: str, *, low: float, high: float, integer: bool,
            optional=None):
    value = _require(data, key, int if integer else (int, float), where, optional=optional)
    if not (low <= value <= high):      # also False for NaN
        raise KepError(f"board profile {where}: {key!r} must be between {low:g} and {high:g}, "
                       f"got {value!r}")
    return int(value) if integer else float(value)


def _flag(data: dict, key: str, where: str, *, optional: bool) -> bool:
    value = data.get(key, optional)
    if not isinstance(value, bool):
        raise KepError(f"board profile {where}: {key!r} must be true or false, got {value!r}")
    return value


def _name(data: dict, key: str, where: str, *, optional=None) -> str:
    value = _require(data, key, str, where, optional=optional)
    if value is not optional and not value.strip():
        raise KepError(f"board profile {where}: {key!r} must not be empty")
    return value


def parse_profile(text: str, where: str = "<text>") -> BoardProfile:
    """Parse and validate one TOML profile (every field: type, range, no unknown keys).

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
        On invalid TOML, a missing or unknown key, or a value of the wrong type or range.
    """
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as e:
        raise KepError(f"board profile {where}: invalid TOML ({str(e)[:200]})") from None
    sections = {"": ("name", "description", "platform", "device", "program", "clock", "uart",
                     "budget", "defaults"),
                "clock": ("resource", "freq_mhz", "default_mhz"),
                "uart": ("resource", "tx_enable", "baud", "rx_pin", "tx_pin", "io_type"),
                "budget": ("luts", "dsps", "brams"),
                "defaults": ("pes", "px", "lanes", "rq_lanes", "lut_pes", "operand_reg",
                             "weights", "placer", "seed")}
    for section, keys in sections.items():
        table = data if not section else _require(data, section, dict, where)
        unknown = sorted(set(table) - set(keys))
        if unknown:
            name = f"[{section}] " if section else ""
            raise KepError(f"board profile {where}: unknown key {name}{unknown[0]!r} "
                           f"(known: {', '.join(keys)})")
    clock, uart, budget, defaults = (data[k] for k in ("clock", "uart", "budget", "defaults"))
    program = _require(data, "program", list, where, optional=[])
    if not all(isinstance(a, str) for a in program):
        raise KepError(f"board profile {where}: 'program' must be a list of strings")
    platform = _name(data, "platform", where)
    if platform.count(":") != 1 or not all(platform.split(":")):
        raise KepError(f"board profile {where}: 'platform' must be 'module:Class', "
                       f"got {platform!r}")
    for key in ("tx_enable", "rx_pin", "tx_pin", "io_type"):
        _name(uart, key, where, optional="")
    if ("rx_pin" in uart) != ("tx_pin" in uart):
        raise KepError(f"board profile {where}: [uart] needs both rx_pin and tx_pin, or neither")
    prof = BoardProfile(
        name=_name(data, "name", where),
        description=_require(data, "description", str, where, optional=""),
        platform=platform,
        device=_name(data, "device", where),
        program=tuple(program),
        clk_resource=_name(clock, "resource", where),
        clk_mhz=_number(clock, "freq_mhz", where, low=1.0, high=_MAX_MHZ, integer=False),
        default_mhz=_number(clock, "default_mhz", where, low=1.0, high=_MAX_MHZ,
                            integer=False),
        uart={**uart, "resource": _name(uart, "resource", where),
              "baud": _number(uart, "baud", where, low=300, high=_MAX_BAUD, integer=True,
                              optional=115200)},
        luts=_number(budget, "luts", where, low=1, high=_MAX_COUNT, integer=True),
        dsps=_number(budget, "dsps", where, low=1, high=_MAX_COUNT, integer=True),
        brams=_number(budget, "brams", where, low=1, high=_MAX_COUNT, integer=True),
        default_pes=_number(defaults, "pes", where, low=1, high=_MAX_PES, integer=True),
        weights=_name(defaults, "weights", where),
        default_px=_number(defaults, "px", where, low=1, high=_MAX_PES, integer=True,
                           optional=1),
        default_lanes=_number(defaults, "lanes", where, low=1, high=_MAX_PES, integer=True,
                              optional=4),
        default_rq_lanes=_number(defaults, "rq_lanes", where, low=0, high=_MAX_PES,
                                 integer=True, optional=0) or None,
        default_lut_pes=_number(defaults, "lut_pes", where, low=0, high=_MAX_PES,
                                integer=True, optional=0),
        default_operand_reg=_flag(defaults, "operand_reg", where, optional=False),
        placer=_name(defaults, "placer", where, optional="heap"),
        default_seed=_number(defaults, "seed", where, low=0, high=2**31 - 1, integer=True,
                             optional=1),
    )
    if prof.default_rq_lanes is not None and prof.default_lanes % prof.default_rq_lanes:
        raise KepError(f"board profile {where}: defaults.rq_lanes must divide lanes")
    if prof.default_lut_pes > prof.default_pes:
        raise KepError(f"board profile {where}: defaults.lut_pes must be at most pes")
    if prof.default_pes % prof.default_px or (prof.default_pes // prof.default_px) \
            % prof.default_lanes:
        raise KepError(f"board profile {where}: defaults.pes must be a multiple of px x lanes")
    if prof.placer not in PLACERS:
        raise KepError(f"board profile {where}: placer must be one of {PLACERS}, "
                       f"got {prof.placer!r}")
    if prof.weights not in WEIGHT_MODES:
        raise KepError(f"board profile {where}: weights must be one of {WEIGHT_MODES}, "
                       f"got {prof.weights!r}")
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
