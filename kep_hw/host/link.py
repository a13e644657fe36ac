# SPDX-License-Identifier: Apache-2.0
"""Host side of the board link: talk to a board (or its simulation) over a byte transport.

The transport is anything with ``write(bytes)`` and ``read(n) -> bytes`` that returns early
with what it has after a short timeout: a serial port opened with :func:`open_port` (a device
such as ``/dev/ttyUSB0``, or a pyserial URL such as ``socket://host:port`` or
``rfc2217://host:port``), or the same on the pseudo-terminal of the simulation
(:mod:`kep_hw.bench.system_sim`).

Nothing waits forever and nothing a board sends ends in a traceback. Every answer must start
within ``timeout``; each byte of a frame must follow the previous one within ``byte_timeout``;
every image has an overall deadline (``image_timeout``, by default derived from the traffic of
one image at the link's baud rate: :meth:`BoardLink.default_image_timeout`), and in streamed
mode the board may ask for each layer's weights once, in order, so one image is at most
``layers + 1`` frames from the board. A silent or too slow board raises
:class:`~kep_hw.system.protocol.BoardTimeout`, a corrupted, truncated or unexpected frame (or an
``ERROR`` frame from the board) :class:`~kep_hw.system.protocol.ProtocolError`, a transport that
fails (the board hung up, the adapter was unplugged) :class:`LinkError`; all are
:class:`~kep_common.errors.KepError`, one line on the command line.
"""

from __future__ import annotations

import math
import struct
import time

import torch

from kep_common.errors import KepError

from kep_hw.gateware.images import words_to_tensor
from kep_hw.gateware.layouts import PARAM_WORD_BITS, WEIGHT_ELEM_BITS
from kep_hw.system.plan import NetworkPlan, image_payload
from kep_hw.system.protocol import (MAX_PAYLOAD, PROTOCOL_VERSION, BoardTimeout, ErrorCode,
                                    FrameReader, FrameType, ProtocolError, check_seconds,
                                    encode_frame)

__all__ = ["BoardInfo", "BoardLink", "LinkError", "open_port", "find_port", "parse_info",
           "DEFAULT_BAUD", "READ_POLL", "USB_ADAPTERS"]

#: Baud rate assumed for the image deadline when neither the caller nor the transport gives one
#: (the slowest packaged board's).
DEFAULT_BAUD = 115200
#: The serial port's read timeout: ``read(n)`` returns what it has after this many seconds.
READ_POLL = 0.05
#: Bytes a frame adds to its payload (SYNC, TYPE, LEN, CRC).
FRAME_OVERHEAD = 6

_ERROR_TEXT = {ErrorCode.CRC: "CRC mismatch", ErrorCode.TYPE: "unknown frame type",
               ErrorCode.LENGTH: "bad length", ErrorCode.STATE: "not allowed now",
               ErrorCode.TIMEOUT: "inter-byte timeout"}


class LinkError(KepError):
    """The transport failed: the board hung up, the adapter was unplugged, a write timed out."""


class BoardInfo(dict):
    """The fields of an ``INFO`` frame: ``version``, ``po``, ``lanes``, ``streamed``,
    ``layers``, ``clk_khz``, ``model_id``, ``in_words``, ``out_words``, ``px``, ``classes``
    (``po`` is Po, the output channels per group; the engine has ``P = po * px`` PEs;
    ``classes`` the logits of a ``RESULT``, 0 for a bitstream without the on-chip head)."""


def parse_info(payload: bytes) -> BoardInfo:
    """Decode an ``INFO`` payload.

    Raises
    ------
    ProtocolError
        If it has the wrong size for its version, or a Po or G no bitstream can have.
    """
    if len(payload) == 18 and payload[0] == 1:      # version 1: no head, answered as such
        payload = bytes(payload) + b"\0\0"
    if len(payload) != 20:
        raise ProtocolError(f"INFO frame of {len(payload)} bytes, expected 20")
    ver, po, lanes, streamed, layers, px, clk, mid, iw, ow, classes = struct.unpack(
        "<6BIIHHH", payload)
    if ver == PROTOCOL_VERSION and (po < 1 or lanes < 1 or lanes & (lanes - 1) or po % lanes):
        raise ProtocolError(f"bad INFO from the board: Po={po} output channels per group with "
                            f"G={lanes} lanes (G must be a power of two dividing Po)")
    return BoardInfo(version=ver, po=po, lanes=lanes, streamed=bool(streamed), layers=layers,
                     clk_khz=clk, model_id=mid, in_words=iw, out_words=ow, px=max(px, 1),
                     classes=classes)


def _is_device(url: str) -> bool:
    """A plain device path (``/dev/ttyUSB0``, ``COM3``), not a pyserial URL such as
    ``socket://`` or ``rfc2217://`` (which have no exclusive access)."""
    return "://" not in url


def open_port(url: str, *, baud: int, timeout: float = 10.0):
    """Open a serial port the way pyserial users expect and empty its input buffer.

    ``serial.serial_for_url`` accepts device paths and pyserial URLs (``socket://host:port``,
    ``rfc2217://host:port``, ``loop://``). Device paths are opened with ``exclusive=True`` (a
    second program on the same port is refused); reads return after :data:`READ_POLL` seconds
    with what has arrived; a write that cannot finish (a board that stopped reading) fails
    after ``timeout`` plus twice the time of the largest frame at ``baud``.

    Parameters
    ----------
    url : str
        Device path or pyserial URL.
    baud : int
        Baud rate (> 0).
    timeout : float
        Seconds (finite, > 0), see above.

    Raises
    ------
    KepError
        If pyserial is missing or the port cannot be opened.
    """
    try:
        import serial
    except ImportError:
        raise KepError("pyserial is missing: pip install pyserial") from None
    timeout = check_seconds("timeout", timeout)
    if isinstance(baud, bool) or not isinstance(baud, int) or baud < 1:
        raise ValueError(f"baud must be a positive integer, got {baud!r}")
    write_timeout = timeout + 2 * (MAX_PAYLOAD + FRAME_OVERHEAD) * 10 / baud
    kwargs = dict(baudrate=baud, timeout=READ_POLL, write_timeout=write_timeout)
    if _is_device(url):
        kwargs["exclusive"] = True
    try:
        port = serial.serial_for_url(url, **kwargs)
    except (OSError, ValueError) as e:          # serial.SerialException is an OSError
        raise KepError(f"cannot open {url}: {e}") from None
    try:
        port.reset_input_buffer()
    except OSError as e:
        port.close()
        raise KepError(f"cannot open {url}: {e}") from None
    return port


#: USB-UART adapters of the packaged boards, by profile name prefix: ``(vid, pid)`` pairs and
#: words of the port's USB description. The ULX3S has an FTDI FT231X (0403:6015) whose product
#: string is often reprogrammed to "ULX3S FPGA 85K v3.0.8". Boards not listed here (Colorlight,
#: OrangeCrab: an external adapter of any kind) match any USB serial port.
USB_ADAPTERS = {"ulx3s": ("FT231X", ((0x0403, 0x6015),), ("FT231X", "ULX3S"))}


def _describe(p) -> str:
    ids = f" {p.vid:04x}:{p.pid:04x}" if getattr(p, "vid", None) is not None else ""
    desc = getattr(p, "description", None) or "n/a"
    return f"{p.device} ({desc}{ids})"


def find_port(board: str = "ulx3s") -> str:
    """The one serial port whose USB adapter is the board's (``--port auto``).

    Ports come from ``serial.tools.list_ports.comports()``; a port matches when its USB vendor
    and product ids, description or product string name the adapter of :data:`USB_ADAPTERS`
    for the board (any USB serial port for a board with an external adapter).

    Parameters
    ----------
    board : str
        A board profile name or alias (``kep_hw.board.profiles``), e.g. ``"ulx3s"``.

    Raises
    ------
    KepError
        If pyserial is missing, the board is unknown, or not exactly one port matches (the
        message lists the ports found).
    """
    from kep_hw.board.profiles import load_board
    name = load_board(board).name
    try:
        from serial.tools import list_ports
    except ImportError:
        raise KepError("pyserial is missing: pip install pyserial") from None
    what, ids, words = next((v for k, v in USB_ADAPTERS.items() if name.startswith(k)),
                            ("a USB-UART adapter", None, None))

    def matches(p) -> bool:
        if getattr(p, "vid", None) is None:
            return False
        if ids is None:
            return True
        text = " ".join(str(getattr(p, a, None) or "") for a in ("description", "product"))
        return (p.vid, p.pid) in ids or any(w.lower() in text.lower() for w in words)

    try:
        ports = sorted(list_ports.comports(), key=lambda p: p.device)
    except OSError as e:
        raise KepError(f"--port auto: cannot list the serial ports: {e}") from None
    found = [p for p in ports if matches(p)]
    if len(found) == 1:
        return found[0].device
    listed = ", ".join(_describe(p) for p in ports) or "none"
    if not found:
        raise KepError(f"--port auto: no serial port with the {name} board's adapter ({what}); "
                       f"ports found: {listed}; give --port DEVICE")
    raise KepError(f"--port auto: {len(found)} ports with the {name} board's adapter ({what}): "
                   f"{', '.join(_describe(p) for p in found)}; give --port DEVICE")


class BoardLink:
    """Run a planned network on a board.

    Parameters
    ----------
    transport : object
        ``write(bytes)`` and ``read(n)`` (returning early with what it has).
    plan : NetworkPlan or None
        The plan the board was built from (checked against the board's ``INFO``). ``None``:
        not known yet; :meth:`connect` then only reads the ``INFO`` (to plan the network for
        its Po and G) and :meth:`use_plan` gives the plan before the first image.
    timeout : float
        Seconds to wait for each answer to start (finite, > 0): for ``INFO``, for each
        ``NEED`` and for the ``RESULT`` (the board's computation included).
    byte_timeout : float
        Seconds allowed between two bytes of one frame (finite, > 0).
    image_timeout : float, optional
        Seconds one image may take in all (finite, > 0): sending it (and, streamed, the
        weights), the board's computation and receiving the result. Default:
        :meth:`default_image_timeout`.
    baud : int, optional
        The link's baud rate for the default deadlines; default: the transport's ``baudrate``
        if it has one, else :data:`DEFAULT_BAUD`.

    Raises
    ------
    ValueError
        If a timeout is not a finite number > 0 or the baud rate not a positive integer.
    KepError
        If the network's input or output does not fit one frame.
    """

    def __init__(self, transport, plan: NetworkPlan | None, *, timeout: float = 10.0,
                 byte_timeout: float = 1.0, image_timeout: float | None = None,
                 baud: int | None = None):
        if plan is not None:
            self._check_fits(plan)
        self.t = transport
        self.plan = plan
        self.timeout = check_seconds("timeout", timeout)
        self.byte_timeout = check_seconds("byte_timeout", byte_timeout)
        if baud is None:
            baud = getattr(transport, "baudrate", None) or DEFAULT_BAUD
        if isinstance(baud, bool) or not isinstance(baud, int) or baud < 1:
            raise ValueError(f"baud must be a positive integer, got {baud!r}")
        self.baud = baud
        self._image_timeout = (None if image_timeout is None
                               else check_seconds("image_timeout", image_timeout))
        self.reader = FrameReader(self._read, timeout=self.timeout,
                                  byte_timeout=self.byte_timeout)
        self.info: BoardInfo | None = None

    @staticmethod
    def _check_fits(plan: NetworkPlan) -> None:
        if plan.image_bytes > MAX_PAYLOAD or plan.result_bytes(True) > MAX_PAYLOAD:
            raise KepError(f"the network's input ({plan.image_bytes} bytes) or last "
                           f"conv output does not fit one frame of {MAX_PAYLOAD} bytes")

    def use_plan(self, plan: NetworkPlan) -> None:
        """Set the plan (e.g. made for the Po and G of the ``INFO`` that :meth:`connect` read
        without one) and check it against that ``INFO`` if there is one.

        Raises
        ------
        KepError
            If the network does not fit a frame or the board runs another network.
        """
        self._check_fits(plan)
        if self.info is not None:
            self._check_plan(self.info, plan)
        self.plan = plan

    # transport: every failure of the port becomes a LinkError

    def _read(self, n: int) -> bytes:
        try:
            return self.t.read(n)
        except OSError as e:            # serial.SerialException is an OSError
            raise LinkError(f"lost the board while reading (hung up or unplugged?): {e}") from e

    def _write(self, data: bytes) -> None:
        try:
            self.t.write(data)
        except OSError as e:
            raise LinkError(f"lost the board while writing (hung up, unplugged or not "
                            f"reading?): {e}") from e

    # deadlines

    def _word_frames(self, words: int, word_bits: int) -> tuple[int, int]:
        """(frames, bytes) of the ``WRITE`` frames for ``words`` words."""
        nbytes = (word_bits + 7) // 8
        per = (MAX_PAYLOAD - 3) // nbytes
        frames = math.ceil(words / per)
        return frames, frames * (FRAME_OVERHEAD + 3) + words * nbytes

    def image_traffic(self, streamed: bool) -> tuple[int, int]:
        """Frames and bytes on the wire (both directions) for one image: ``IMAGE`` and
        ``RESULT`` (with the last conv output: the longer one, for the deadlines), and in
        streamed mode every layer's ``NEED``, ``WRITE`` frames and ``GO``."""
        plan = self.plan
        frames = 2
        nbytes = 2 * FRAME_OVERHEAD + plan.image_bytes + plan.result_bytes(True)
        if streamed:
            for lp in (plan.layers[n] for n in plan.conv_layers):
                for words, bits in ((len(lp.wt_words), WEIGHT_ELEM_BITS * plan.po),
                                    (len(lp.prm_words), PARAM_WORD_BITS)):
                    f, b = self._word_frames(words, bits)
                    frames, nbytes = frames + f, nbytes + b
                frames += 2
                nbytes += 2 * FRAME_OVERHEAD + 1
        return frames, nbytes

    def default_image_timeout(self, streamed: bool) -> float:
        """The default deadline of one image: ``timeout`` (the board's computation) plus twice
        the image's bytes on the wire at the baud rate (10 bits a byte), 50 ms per frame
        and 1 s."""
        frames, nbytes = self.image_traffic(streamed)
        return self.timeout + 2 * nbytes * 10 / self.baud + 0.05 * frames + 1.0

    def image_timeout(self, streamed: bool | None = None) -> float:
        """Seconds one image may take (``image_timeout`` or the default)."""
        if self._image_timeout is not None:
            return self._image_timeout
        if streamed is None:
            streamed = bool(self.info and self.info["streamed"])
        return self.default_image_timeout(streamed)

    def _expect(self, *types, deadline: float, what: str, limit: float) -> tuple[int, bytes]:
        """Next frame, one of ``types``; ``deadline`` bounds it, ``limit`` names it."""
        try:
            ftype, payload = self.reader.read_frame(deadline=deadline)
        except BoardTimeout as e:
            if time.monotonic() >= deadline:
                raise BoardTimeout(f"{what} took longer than {limit:.3g} s ({e})") from None
            raise
        if ftype == FrameType.ERROR:
            code = payload[0] if payload else 0
            rejected = payload[1] if len(payload) > 1 else 0
            try:
                code_text = f"{_ERROR_TEXT[ErrorCode(code)]} (code {code})"
            except ValueError:
                code_text = f"code {code}"
            try:
                frame = FrameType(rejected).name
            except ValueError:
                frame = f"0x{rejected:02x}"
            raise ProtocolError(f"the board rejected the {frame} frame: {code_text}")
        if ftype not in types:
            try:
                name = FrameType(ftype).name
            except ValueError:
                name = "unknown"
            raise ProtocolError(f"unexpected {name} frame (type 0x{ftype:02x}) from the board "
                                f"while waiting for "
                                f"{' or '.join(FrameType(t).name for t in types)}")
        return ftype, payload

    # protocol

    def connect(self) -> BoardInfo:
        """``PING`` the board and check that it runs this plan (if the link has one).

        Raises
        ------
        BoardTimeout, ProtocolError, LinkError
            On a silent board, a bad frame, a failed transport.
        KepError
            If the board runs another protocol version, P, lane count or network.
        """
        limit = self.timeout + 2 * (FRAME_OVERHEAD * 2 + 18) * 10 / self.baud + 1.0
        deadline = time.monotonic() + limit
        self._write(encode_frame(FrameType.PING))
        _, payload = self._expect(FrameType.INFO, deadline=deadline,
                                  what="the answer to PING",
                                  limit=limit)
        info = parse_info(payload)
        if info["version"] != PROTOCOL_VERSION:
            raise KepError(f"board speaks protocol {info['version']}, host {PROTOCOL_VERSION}")
        if self.plan is not None:
            self._check_plan(info, self.plan)
        self.info = info
        return info

    @staticmethod
    def _check_plan(info: BoardInfo, plan: NetworkPlan) -> None:
        """Refuse a board whose ``INFO`` is not that of a bitstream built for ``plan``."""
        want = plan.model_id(info["streamed"])
        if (info["po"], info["lanes"], info["layers"], info["model_id"]) != \
                (plan.po, plan.lanes, len(plan.layers), want):
            raise KepError("the board's bitstream was built for another model or --pes "
                           f"(board Po={info['po']}, G={info['lanes']}, {info['layers']} "
                           f"layers, id {info['model_id']:08x}; host Po={plan.po}, "
                           f"G={plan.lanes}, {len(plan.layers)} layers, id {want:08x})")
        if (info["in_words"], info["out_words"], info["classes"]) != \
                (plan.in_words, plan.out_words, plan.classes):
            raise ProtocolError(f"bad INFO from the board: {info['in_words']} input and "
                                f"{info['out_words']} output words, {info['classes']} classes; "
                                f"the model has {plan.in_words}, {plan.out_words} and "
                                f"{plan.classes}")

    def _send_words(self, mem: int, words: list, word_bits: int, deadline: float,
                    limit: float) -> None:
        nbytes = (word_bits + 7) // 8
        per = (MAX_PAYLOAD - 3) // nbytes
        for start in range(0, len(words), per):
            if time.monotonic() > deadline:
                raise BoardTimeout(f"the image took longer than {limit:.3g} s (still "
                                   "sending weights)")
            chunk = words[start:start + per]
            payload = struct.pack("<BH", mem, start) + b"".join(
                w.to_bytes(nbytes, "little") for w in chunk)
            self._write(encode_frame(FrameType.WRITE, payload))

    def send_layer(self, n: int, *, deadline: float = math.inf,
                   limit: float = math.inf) -> None:
        """Stream layer ``n``'s weight and parameter words (streamed mode), then ``GO``."""
        lp = self.plan.layers[n]
        self._send_words(0, lp.wt_words, WEIGHT_ELEM_BITS * self.plan.po, deadline, limit)
        self._send_words(1, lp.prm_words, PARAM_WORD_BITS, deadline, limit)
        self._write(encode_frame(FrameType.GO))

    def infer(self, x: torch.Tensor, *, fmap: bool = False
              ) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        """Run one int8 image ``[C, H, W]``; returns ``(logits, output, cycles)``: the board's
        int32 logits (int64 tensor ``[classes]``; ``None`` without a head), the last conv
        output (int8 ``[C, H, W]``; only with ``fmap=True`` or without a head, else ``None``)
        and the hardware cycles.

        ``fmap=True`` sends the image in an ``IMAGE_FMAP`` frame, whose ``RESULT`` also
        carries the last conv output. Connects first if :meth:`connect` has not been called. The whole image must be done
        within :meth:`image_timeout`; in streamed mode the board must ask for every layer
        once, in order (``NEED`` with the index in the layer table of every conv layer; max
        pooling layers need no weights), before its ``RESULT``.

        Raises
        ------
        BoardTimeout, ProtocolError, LinkError
            On a silent or too slow board, a bad or unexpected frame, a failed transport.
        """
        if self.plan is None:
            raise KepError("no network plan for this board yet (BoardLink.use_plan)")
        if tuple(x.shape) != tuple(self.plan.in_shape):
            raise KepError(f"image shape {tuple(x.shape)} != network input {self.plan.in_shape}")
        if self.info is None:
            self.connect()
        streamed = self.info["streamed"]
        limit = self.image_timeout(streamed)
        deadline = time.monotonic() + limit
        convs = self.plan.conv_layers
        layers = len(convs)
        data = image_payload(x)
        self._write(encode_frame(FrameType.IMAGE_FMAP if fmap else FrameType.IMAGE, data))
        want_layer = 0                  # streamed: the next layer the board may ask for
        while True:                     # at most layers + 1 frames (each NEED advances)
            ftype, payload = self._expect(FrameType.NEED, FrameType.RESULT, deadline=deadline,
                                          what="the image", limit=limit)
            if ftype == FrameType.NEED:
                if not streamed:
                    raise ProtocolError("NEED frame from a board that reported embedded "
                                        "weights")
                if len(payload) != 1:
                    raise ProtocolError(f"bad NEED frame of {len(payload)} bytes")
                if want_layer >= layers or payload[0] != convs[want_layer]:
                    raise ProtocolError(
                        f"the board asked for layer {payload[0]}, expected "
                        + (f"layer {convs[want_layer]}" if want_layer < layers else
                           f"the RESULT after all {layers} layers")
                        + " (each layer's weights once, in order)")
                self.send_layer(payload[0], deadline=deadline, limit=limit)
                want_layer += 1
                continue
            if streamed and want_layer != layers:
                raise ProtocolError(f"RESULT after the weights of {want_layer} of {layers} "
                                    "layers")
            return self._parse_result(payload, fmap)

    def _parse_result(self, payload: bytes, fmap: bool):
        """``(logits, output, cycles)`` of a ``RESULT`` payload (see :meth:`infer`)."""
        plan = self.plan
        want = plan.result_bytes(fmap)
        if len(payload) != want:
            raise ProtocolError(f"RESULT of {len(payload)} bytes, expected {want}")
        cycles = struct.unpack("<I", payload[:4])[0]
        j = plan.classes
        logits = (torch.tensor(struct.unpack(f"<{j}i", payload[4:4 + 4 * j]),
                               dtype=torch.int64) if j else None)
        out = None
        if len(payload) > 4 + 4 * j:
            lanes = plan.lanes
            words = [int.from_bytes(payload[i:i + lanes], "little")
                     for i in range(4 + 4 * j, len(payload), lanes)]
            out = words_to_tensor(words, plan.out_shape, lanes)
        return logits, out, cycles

    def can_overlap(self, fmap: bool = False) -> bool:
        """Whether :meth:`infer_many` overlaps the images: embedded weights, an on-chip head
        and no feature map asked for (the board then receives the next image while it
        computes one)."""
        if self.info is None:
            self.connect()
        return not self.info["streamed"] and self.plan.classes > 0 and not fmap

    def infer_many(self, images, *, fmap: bool = False):
        """Run int8 images ``[C, H, W]`` one after another; yields ``(logits, output, cycles)``
        per image in order, as :meth:`infer`.

        When :meth:`can_overlap`, two images are in flight: image ``k + 2`` is sent as soon as
        the ``RESULT`` of image ``k`` has arrived, so the board receives an image while it
        computes the one before (its input buffer is double). Each image must be done within
        :meth:`image_timeout` of being sent or of the previous image's ``RESULT``, whichever
        is later (it may wait for the one before).
        Otherwise the images go one at a time (:meth:`infer`).

        Raises
        ------
        BoardTimeout, ProtocolError, LinkError, KepError
            As :meth:`infer`.
        """
        if self.plan is None:
            raise KepError("no network plan for this board yet (BoardLink.use_plan)")
        if not self.can_overlap(fmap):
            for x in images:
                yield self.infer(x, fmap=fmap)
            return
        limit = self.image_timeout(False)
        it = iter(images)
        flight = []                     # times the images in flight were sent, in order

        def send() -> None:
            x = next(it, None)
            if x is None:
                return
            if tuple(x.shape) != tuple(self.plan.in_shape):
                raise KepError(f"image shape {tuple(x.shape)} != network input "
                               f"{self.plan.in_shape}")
            flight.append(time.monotonic())
            self._write(encode_frame(FrameType.IMAGE, image_payload(x)))

        send()
        send()
        last = time.monotonic()
        while flight:
            deadline = max(flight.pop(0), last) + limit
            _, payload = self._expect(FrameType.RESULT, deadline=deadline, what="the image",
                                      limit=limit)
            last = time.monotonic()
            result = self._parse_result(payload, False)
            send()
            yield result
