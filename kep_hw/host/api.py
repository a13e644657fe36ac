# SPDX-License-Identifier: Apache-2.0
"""Python API of the host runtime: open a board (or its simulation) and classify images.

:func:`open_board` asks the board what it is (its ``INFO`` frame: Po, Px, G, weight mode,
clock, model id), plans the network for it and returns a :class:`Board`;
:meth:`Board.classify` takes image files, Pillow images, arrays or tensors and returns one
:class:`Result` per image (prediction, logits, last conv output, hardware cycles and the
golden model's prediction on the same int8 input). ``python -m kep_hw.run`` is built on it.

Example
-------
>>> from kep_hw.host.api import open_board
>>> with open_board("auto", model="runs/r20-k4/model.kep", board="ulx3s") as board:
...     for r in board.classify(["cat.jpg", "ship.png"]):
...         print(r.prediction, r.logits.tolist(), r.cycles, r.golden)
...     print(board.timing.latency_ms)

Images of any size are fitted to the model's input ``H x W`` by :func:`fit_image`: scaled
with Pillow's bilinear filter (which low-pass filters when shrinking) so that the shorter side
fits, then centre-cropped (``resize="crop"``, default), or scaled to exactly ``H x W``
ignoring the aspect ratio (``resize="stretch"``); then quantized like the golden model
(:func:`kep_train.golden.evaluate.quantize_input`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from kep_common.errors import KepError

from kep_hw.host.link import BoardInfo, BoardLink, find_port, open_port
from kep_hw.system.plan import NetworkPlan, plan_network, run_tail

__all__ = ["Board", "Result", "Timing", "open_board", "fit_image", "load_images",
           "class_names", "RESIZE_MODES"]

RESIZE_MODES = ("crop", "stretch")


@dataclass
class Result:
    """One classified image.

    Attributes
    ----------
    prediction : int
        Top-1 class of the board's logits (ties to the lowest index).
    logits : torch.Tensor
        int64 ``[classes]``: the board's int32 logits (from the on-chip head; for a bitstream
        without one, the host's global average pooling and classifier on its last conv
        output, in the same exact integers).
    output : torch.Tensor or None
        int8 ``[C, H, W]``: the board's last conv output (``fmap=True`` or no head), else
        ``None``.
    cycles : int
        The board's cycle counter for this image (UART time excluded).
    golden : int or None
        The golden model's top-1 on the same int8 input (``None`` without ``check``).
    golden_logits : torch.Tensor or None
        The golden model's logits.
    logits_equal : bool or None
        The board's logits equal the golden model's (``None`` without ``check``).
    mismatched : int or None
        Values of the last conv output that differ from the golden model's (0: bit-exact;
        ``None`` without ``check`` or without the output).
    """
    prediction: int
    logits: torch.Tensor
    output: torch.Tensor | None
    cycles: int
    golden: int | None = None
    golden_logits: torch.Tensor | None = None
    logits_equal: bool | None = None
    mismatched: int | None = None


@dataclass
class Timing:
    """Cycle counts of the images classified so far and the board's clock.

    Attributes
    ----------
    cycles : list of int
        Per image, in order.
    clock_mhz : float or None
        The clock given to :func:`open_board`, else the one the board reports (``None`` if it
        reports 0 kHz).
    seconds : float
        Wall time of :meth:`Board.classify` so far, from sending the first image to the last
        result (golden checks excluded), for :attr:`images_per_second`.
    """
    cycles: list = field(default_factory=list)
    clock_mhz: float | None = None
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float | None:
        """Images classified per second of wall time, end to end (UART and host included;
        ``None`` before the first image)."""
        return len(self.cycles) / self.seconds if self.cycles and self.seconds > 0 else None

    @property
    def mean_cycles(self) -> float | None:
        """Mean cycles per image (``None`` before the first image)."""
        return sum(self.cycles) / len(self.cycles) if self.cycles else None

    @property
    def latency_ms(self) -> float | None:
        """Mean compute time per image in ms at :attr:`clock_mhz` (UART time excluded)."""
        if self.mean_cycles is None or not self.clock_mhz:
            return None
        return self.mean_cycles / self.clock_mhz / 1e3


def class_names(kep) -> tuple | None:
    """The CIFAR-10 class names for a model with 10 classes, else ``None``."""
    from kep_train.data.cifar import CIFAR10_CLASSES
    last = [layer for layer in kep.layers if layer.op == "linear"]
    n = last[-1].out_shape[0] if last else kep.meta.get("num_classes")
    return CIFAR10_CLASSES if n == 10 else None


def fit_image(image, shape, *, resize: str = "crop") -> torch.Tensor:
    """A Pillow image as uint8 ``[C, H, W]`` of the model's input ``shape = (C, H, W)``.

    ``resize="crop"``: scale (bilinear) so that the image covers ``H x W`` with its aspect
    ratio kept (the shorter side fits), then cut the centre ``H x W``; ``"stretch"``: scale
    to ``H x W`` (bilinear), aspect ratio not kept. Converted to RGB (``C = 3``) or grey
    (``C = 1``) first.

    Raises
    ------
    KepError
        For another channel count or an unknown ``resize``.
    """
    from PIL import Image
    c, h, w = (int(v) for v in shape)
    if resize not in RESIZE_MODES:
        raise KepError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    if c not in (1, 3):
        raise KepError(f"the model takes {c} input channels; images need 1 (grey) or 3 (RGB)")
    im = image.convert("RGB" if c == 3 else "L")
    if resize == "stretch":
        im = im.resize((w, h), Image.BILINEAR)
    else:
        iw, ih = im.size
        s = max(w / iw, h / ih)
        nw, nh = max(w, round(iw * s)), max(h, round(ih * s))
        if (nw, nh) != (iw, ih):
            im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - w) // 2, (nh - h) // 2
        im = im.crop((left, top, left + w, top + h))
    arr = np.asarray(im, dtype=np.uint8).reshape(h, w, c)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def load_images(images, kep, *, resize: str = "crop") -> torch.Tensor:
    """int8 ``[N, C, H, W]`` network inputs from what :meth:`Board.classify` accepts.

    ``images`` is one item or a list of items; an item is a file path (read with
    :func:`kep_train.data.folders.read_rgb`: regular files of the common formats only,
    decompression bombs refused), a Pillow image, a uint8 array ``[H, W, 3]`` (any size;
    these three are fitted with :func:`fit_image`), a uint8 tensor ``[C, H, W]`` or
    ``[N, C, H, W]`` of the model's input size, or an int8 tensor of that size (already
    quantized, used as it is). uint8 pixels are quantized with
    :func:`kep_train.golden.evaluate.quantize_input`.

    Raises
    ------
    KepError
        Unreadable image, wrong size or type (one line).
    """
    from PIL import Image
    from kep_train.data.folders import read_rgb
    from kep_train.golden.evaluate import quantize_input
    shape = tuple(int(v) for v in kep.meta["input_shape"])
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise KepError("no images to classify")
    out = []
    for n, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            item = read_rgb(item)
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] not in (1, 3):
                raise KepError(f"image {n}: an array must be uint8 [H, W, 3], got "
                               f"{item.dtype} {list(item.shape)}")
            item = Image.fromarray(item[..., 0] if item.shape[2] == 1 else item)
        if isinstance(item, Image.Image):
            item = quantize_input(kep, fit_image(item, shape, resize=resize).unsqueeze(0))[0]
        elif isinstance(item, torch.Tensor):
            if tuple(item.shape) != shape or item.dtype not in (torch.uint8, torch.int8):
                raise KepError(f"image {n}: a tensor must be uint8 or int8 {list(shape)} (the "
                               f"model's input), got {item.dtype} {list(item.shape)}")
            if item.dtype == torch.uint8:
                item = quantize_input(kep, item.unsqueeze(0))[0]
        else:
            raise KepError(f"image {n}: cannot classify a {type(item).__name__} (give a path, "
                           "a PIL image, an array or a tensor)")
        out.append(item)
    return torch.stack(out)


class Board:
    """A connected board (or simulation) that runs one model; made by :func:`open_board`.

    Attributes
    ----------
    info : BoardInfo
        The board's ``INFO`` frame (``po``, ``px``, ``lanes``, ``streamed``, ``clk_khz``, ...).
    plan : NetworkPlan
        The network planned for the board's Po and G.
    model : KepModel
        The model.
    link : BoardLink
        The framed link (timeouts, protocol).
    target : str
        The port, or ``"sim"``.
    timing : Timing
        Cycles of every image so far and the clock.
    """

    def __init__(self, link: BoardLink, model, *, target: str, stack: contextlib.ExitStack,
                 clock_mhz: float | None = None):
        self.link, self.model, self.target = link, model, target
        self.info: BoardInfo = link.info
        self.plan: NetworkPlan = link.plan
        self._stack = stack
        clk = clock_mhz if clock_mhz is not None else (self.info["clk_khz"] / 1000 or None)
        self.timing = Timing(clock_mhz=clk)
        #: the simulation's operand registers (a board does not report them): bool, or None
        self.operand_reg: bool | None = None
        #: the simulation's distribution register (``EngineParams.dist_reg``): bool, or None
        self.dist_reg: bool | None = None

    @property
    def pes(self) -> int:
        """P, the engine's PEs (``po * px``)."""
        return self.info["po"] * self.info["px"]

    def infer(self, x: torch.Tensor, *, fmap: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """One int8 image ``[C, H, W]``: ``(logits, output, cycles)`` as
        :meth:`BoardLink.infer` returns them, with the logits computed on the host from the
        last conv output for a bitstream without the on-chip head."""
        logits, out, cycles = self.link.infer(x, fmap=fmap)
        if logits is None:
            logits = run_tail(self.plan.tail, out)
        self.timing.cycles.append(cycles)
        return logits, out, cycles

    def classify(self, images, *, check: bool = True, resize: str = "crop",
                 progress=None, fmap: bool = False) -> list[Result]:
        """Classify images on the board.

        Parameters
        ----------
        images : path, PIL image, array, tensor or a list of them
            See :func:`load_images` (files and images of any size are fitted to the model's
            input with :func:`fit_image`).
        check : bool
            Also run the golden model (:func:`kep_train.golden.evaluate.run_network`) on the
            same int8 inputs: fills ``golden``, ``golden_logits`` and ``mismatched``.
        resize : str
            ``"crop"`` or ``"stretch"`` (:func:`fit_image`).
        progress : callable, optional
            Called as ``progress(n, result)`` after each image.
        fmap : bool
            Also fetch the last conv output (``IMAGE_FMAP``; a debugging aid: the result
            frame grows by the whole feature map) and, with ``check``, compare it.

        Returns
        -------
        list of Result

        Raises
        ------
        KepError
            Bad image; a silent, slow or misbehaving board (:mod:`kep_hw.host.link`).
        """
        x = load_images(images, self.model, resize=resize)
        golden = golden_last = None
        if check:
            from kep_train.golden.evaluate import run_network
            golden, acts = run_network(self.model, x, return_all=True)
            golden_last = acts[self.plan.layers[-1].name]     # the last on-chip layer
        results = []
        t0 = time.monotonic()
        answers = self.link.infer_many((x[n] for n in range(x.shape[0])), fmap=fmap)
        for n, (logits, out, cycles) in enumerate(answers):
            if logits is None:
                logits = run_tail(self.plan.tail, out)
            self.timing.cycles.append(cycles)
            self.timing.seconds += time.monotonic() - t0
            t0 = time.monotonic()
            r = Result(prediction=int(torch.argmax(logits)), logits=logits, output=out,
                       cycles=cycles)
            if check:
                r.golden_logits = golden[n].to(torch.int64)
                r.golden = int(torch.argmax(r.golden_logits))
                r.logits_equal = bool(torch.equal(logits, r.golden_logits))
                if out is not None:
                    r.mismatched = int((out != golden_last[n]).sum())
            results.append(r)
            if progress:
                progress(n, r)
        return results

    def close(self) -> None:
        """Close the port (or stop the simulation)."""
        self._stack.close()

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_config(info: BoardInfo, pes, px, lanes) -> None:
    """Refuse a board whose ``INFO`` disagrees with the P, Px or G the caller gave."""
    if (pes is not None and (pes, px) != (info["po"] * info["px"], info["px"])) or \
            (lanes is not None and lanes != info["lanes"]):
        have = f"P={info['po'] * info['px']} (Po={info['po']} x PX={info['px']}), " \
               f"G={info['lanes']}"
        want = ", ".join(([f"--pes {pes}x{px}"] if pes is not None else [])
                         + ([f"--lanes {lanes}"] if lanes is not None else []))
        raise KepError(f"the board's bitstream has {have}, not {want} (leave out --pes and "
                       "--lanes to take them from the board)")


def open_board(port: str | None = None, *, sim: bool = False, model, board: str = "ulx3s",
               pes: str | int | None = None, lanes: int | None = None,
               baud: int | None = None, timeout: float | None = None,
               image_timeout: float | None = None, weights: str | None = None,
               clock_mhz: float | None = None, operand_reg: bool | None = None,
               dist_reg: bool = False,
               build_root="sim_build") -> Board:
    """Open a board (or its Verilator simulation) that runs ``model``.

    On a board, the engine's configuration comes from its ``INFO`` frame (Po, Px, G) and the
    network is planned for it; ``pes`` and ``lanes``, when given, must agree. The simulation
    has no board to ask before it is built: ``pes``/``lanes``/``weights`` default to the board
    profile's (``ulx3s``: 128 PEs as 16 channels x 8 pixels, G = 16, embedded), and the logic
    multipliers and operand registers to the profile's when ``pes`` is not given (as the build).

    Parameters
    ----------
    port : str, optional
        Device (``/dev/ttyUSB0``, ``COM3``), pyserial URL (``socket://host:port``), or
        ``None``/``"auto"``: the one serial port with the board's USB adapter
        (:func:`kep_hw.host.link.find_port`). Ignored with ``sim``.
    sim : bool
        Run against the Verilator simulation of the whole top level
        (:class:`kep_hw.bench.system_sim.SimBoard`; builds it, minutes the first time).
    model : path or KepModel
        The ``.kep`` model the bitstream was built for.
    board : str
        Board profile name or alias (:func:`kep_hw.board.profiles.load_board`): default baud,
        USB adapter for ``"auto"``, and the simulation's defaults.
    pes : str or int, optional
        P or ``"PxPX"`` (e.g. ``"64x4"``).
    lanes : int, optional
        G, channels per activation word.
    baud : int, optional
        Default: the profile's.
    timeout, image_timeout : float, optional
        See :class:`kep_hw.host.link.BoardLink` (``timeout`` default 10 s, simulation 600 s).
    weights : str, optional
        ``"embedded"`` or ``"stream"`` (simulation only; default: the profile's).
    clock_mhz : float, optional
        Clock for :attr:`Board.timing` instead of the one the board reports (simulation:
        default the ``board`` profile's clock, the one its bitstream runs at).
    operand_reg : bool, optional
        Simulation only: a register per PE before its multiplier (``--operand-reg`` of the
        build); default the profile's without ``pes``, else off.
    dist_reg : bool
        Simulation only: the engine's distribution register before its pixel groups
        (``--dist-reg`` of the build; needs Px > 1). Default off.
    build_root : path
        Simulation build folder.

    Returns
    -------
    Board
        Use it as a context manager (or call :meth:`Board.close`).

    Raises
    ------
    KepError
        Unknown board, no such port, a board that is silent, misbehaves, or runs another
        model or configuration, or a model the plan cannot run with these values.
    """
    from kep_hw.board.profiles import load_board
    from kep_hw.gateware.params import parse_pes
    from kep_train.export.kepfile import load_kep
    profile = load_board(board)
    kep = model if hasattr(model, "conv_layers") else load_kep(model)
    p, px = parse_pes(str(pes)) if pes is not None else (None, None)
    if weights is not None and weights not in ("embedded", "stream"):
        raise KepError(f"weights must be 'embedded' or 'stream', got {weights!r}")
    stack = contextlib.ExitStack()
    try:
        if sim:
            from kep_hw.bench.system_sim import SimBoard
            default = p is None          # as the build: the profile's extras with its own P
            if p is None:
                p, px = profile.default_pes, profile.default_px
            g = lanes if lanes is not None else profile.default_lanes
            while lanes is None and g > 1 and (p // px) % g:
                g //= 2          # --pes without --lanes: the widest word that P/PX fills
            if (p // px) % g:
                raise KepError(f"P/PX = {p // px} (--pes {p}x{px}) is not a multiple of "
                               f"G = {g} (--lanes)")
            if dist_reg and px == 1:
                raise KepError("the distribution register (--dist-reg) needs PX > 1 "
                               "(--pes PxPX)")
            plan = plan_network(kep, po=p // px, lanes=g)
            streamed = (weights or profile.weights) == "stream"
            lut_pes = profile.default_lut_pes if default else 0
            if operand_reg is None:
                operand_reg = profile.default_operand_reg and default
            transport = stack.enter_context(SimBoard(
                plan, streamed=streamed, build_root=build_root, px=px,
                rq_lanes=profile.rq_lanes_for(g), lut_pes=lut_pes, operand_reg=operand_reg,
                dist_reg=dist_reg))
            link = BoardLink(transport, plan, timeout=600.0 if timeout is None else timeout,
                             image_timeout=image_timeout)
            target = "sim"
            if clock_mhz is None:       # the simulation's INFO clock is nominal
                clock_mhz = profile.default_mhz
        else:
            url = find_port(board) if port in (None, "auto") else port
            baud = profile.baud if baud is None else baud
            timeout = 10.0 if timeout is None else timeout
            transport = stack.enter_context(open_port(url, baud=baud, timeout=timeout))
            link = BoardLink(transport, None, timeout=timeout, image_timeout=image_timeout,
                             baud=baud)
            target = url
        info = link.connect()
        if not sim:
            _check_config(info, p, px, lanes)
            link.use_plan(plan_network(kep, po=info["po"], lanes=info["lanes"]))
        elif info["px"] != px:
            raise KepError(f"the simulation reports PX={info['px']}, built for {px}")
        b = Board(link, kep, target=target, stack=stack, clock_mhz=clock_mhz)
        b.operand_reg = operand_reg if sim else None
        b.dist_reg = dist_reg if sim else None
        return b
    except BaseException:
        stack.close()
        raise
