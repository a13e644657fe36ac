# SPDX-License-Identifier: Apache-2.0
"""The framed UART protocol between the host and the board (both sides).

Frame (all multi-byte fields little-endian)::

    SYNC 0xA5 | TYPE u8 | LEN u16 | PAYLOAD (LEN bytes) | CRC u16

``CRC`` is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no final
XOR) over ``TYPE, LEN, PAYLOAD``. ``LEN`` is at most :data:`MAX_PAYLOAD`. A receiver that sees
a CRC mismatch, an unknown type, a length out of range or a gap longer than its inter-byte
timeout inside a frame drops the frame and reports it (the board answers with an ``ERROR``
frame; the host raises :class:`ProtocolError`). See ``docs/boards.md`` for the message flow.

Host to board: ``PING`` (empty) -> ``INFO``; ``WRITE`` (u8 memory, u16 word address, words)
writes weight or parameter words (streamed mode); ``IMAGE`` (the int8 input tensor, HWC words)
runs the network -> ``RESULT`` (u32 cycles, then ``classes`` int32 logits), preceded in
streamed mode by one ``NEED`` (u8 layer) per layer, each answered with the layer's ``WRITE``
frames and ``GO``. ``IMAGE_FMAP`` is ``IMAGE`` whose ``RESULT`` also carries the last conv
output (int8, HWC words) after the logits, for debugging; a network without a head (classes 0)
always returns it (:meth:`kep_hw.system.plan.NetworkPlan.result_bytes`).

Protocol version 2 (the on-chip head) changed ``INFO`` (20 bytes: the classes as u16 at the end)
and ``RESULT``; a host refuses a board of another version.
"""

from __future__ import annotations

import binascii
import enum
import math
import struct
import time

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from kep_common.errors import KepError

__all__ = ["SYNC", "MAX_PAYLOAD", "PROTOCOL_VERSION", "FrameType", "ErrorCode", "ProtocolError",
           "BoardTimeout", "crc16", "encode_frame", "check_seconds", "FrameReader", "Crc16"]

SYNC = 0xA5
MAX_PAYLOAD = 8192
PROTOCOL_VERSION = 2


class FrameType(enum.IntEnum):
    """Frame types (host to board < 0x80, board to host >= 0x80)."""
    PING = 0x01
    WRITE = 0x02
    IMAGE = 0x03
    GO = 0x04
    IMAGE_FMAP = 0x05
    INFO = 0x81
    NEED = 0x82
    RESULT = 0x83
    ERROR = 0x8F


class ErrorCode(enum.IntEnum):
    """Payload byte 0 of an ``ERROR`` frame (byte 1: the offending frame's type)."""
    CRC = 1
    TYPE = 2
    LENGTH = 3
    STATE = 4
    TIMEOUT = 5


class ProtocolError(KepError):
    """A frame was corrupted, truncated or unexpected."""


class BoardTimeout(KepError):
    """The board did not answer in time."""


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``crc16(b"123456789") == 0x29B1``): polynomial 0x1021,
    MSB first, initial value 0xFFFF, no final XOR (``binascii.crc_hqx``, the C implementation)."""
    return binascii.crc_hqx(data, crc)


def encode_frame(ftype: int, payload: bytes = b"") -> bytes:
    """Encode one frame.

    Raises
    ------
    TypeError
        If the type is not an integer or the payload not bytes-like.
    ValueError
        If the type is not a byte or the payload is longer than :data:`MAX_PAYLOAD`.
    """
    if not isinstance(ftype, int) or isinstance(ftype, bool):
        raise TypeError(f"frame type must be an integer, got {ftype!r}")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if not 0 <= ftype <= 0xFF:
        raise ValueError(f"frame type must be a byte, got {ftype!r}")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = struct.pack("<BH", int(ftype), len(payload)) + payload
    return bytes([SYNC]) + body + struct.pack("<H", crc16(body))


def check_seconds(name: str, value) -> float:
    """``value`` as a finite number of seconds > 0.

    Raises
    ------
    ValueError
        If it is not a number, not finite (NaN, infinity) or not positive.
    """
    try:
        ok = not isinstance(value, bool) and math.isfinite(value) and value > 0
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


class FrameReader:
    """Read frames from a byte transport with timeouts (host side).

    Every wait is bounded: the start of a frame by ``timeout``, each byte inside a frame by
    ``byte_timeout``, and, when :meth:`read_frame` is given a ``deadline``, the whole frame by
    that deadline (a peer that drips a frame one byte at a time just inside ``byte_timeout``
    cannot stretch it beyond).

    Parameters
    ----------
    read : callable
        ``read(n) -> bytes`` returning at most ``n`` bytes, possibly fewer (or none) after the
        transport's own short timeout (e.g. a ``serial.Serial`` with ``timeout=0.05``).
    timeout : float
        Seconds to wait for the first byte of a frame (finite, > 0).
    byte_timeout : float
        Seconds allowed between two bytes inside a frame (a longer gap = truncated frame;
        finite, > 0).

    Raises
    ------
    ValueError
        If a timeout is not a finite number > 0.
    """

    def __init__(self, read, *, timeout: float = 5.0, byte_timeout: float = 1.0):
        self._read = read
        self.timeout = check_seconds("timeout", timeout)
        self.byte_timeout = check_seconds("byte_timeout", byte_timeout)
        self._buf = bytearray()
        self._waited = self.timeout     # the wait of the current frame, for the message
        self.stray = 0          # bytes discarded before a SYNC byte (line noise), reported

    def _take(self, n: int, deadline: float, what: str, hard: float) -> bytes:
        """``n`` bytes; ``deadline`` is moved on by ``byte_timeout`` with every byte inside a
        frame, ``hard`` never moves."""
        while len(self._buf) < n:
            now = time.monotonic()
            if now > hard and what != "frame":
                got = len(self._buf)
                self._buf.clear()
                raise BoardTimeout(f"a frame was still arriving: {what} {got} of {n} bytes")
            if now > min(deadline, hard):
                got = len(self._buf)
                self._buf.clear()
                if what == "frame":
                    raise BoardTimeout(f"no answer from the board within {self._waited:.3g} s")
                raise ProtocolError(f"truncated frame: {what} stopped after {got} of {n} bytes")
            chunk = self._read(n - len(self._buf))
            if chunk:
                self._buf += chunk
                if what != "frame":
                    deadline = time.monotonic() + self.byte_timeout
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read_frame(self, timeout: float | None = None, *,
                   deadline: float | None = None) -> tuple[int, bytes]:
        """Return the next valid frame as ``(type, payload)``.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the frame to start (default: the reader's ``timeout``).
        deadline : float, optional
            A ``time.monotonic()`` value by which the whole frame must have arrived.

        Raises
        ------
        BoardTimeout
            If no frame starts within the timeout, or the frame is not complete by
            ``deadline``.
        ProtocolError
            On a corrupted or truncated frame. Bytes before a SYNC byte are discarded and
            counted in ``stray``.
        """
        if timeout is not None:
            check_seconds("timeout", timeout)
        hard = math.inf if deadline is None else deadline
        start = time.monotonic()
        wait = self.timeout if timeout is None else timeout
        self._waited = min(wait, max(hard - start, 0.0))
        skipped = 0
        try:
            while True:
                b = self._take(1, start + wait, "frame", hard)
                if b[0] == SYNC:
                    break
                skipped += 1
        except BoardTimeout as e:
            self.stray += skipped
            if skipped:
                raise BoardTimeout(f"no valid frame from the board within {self._waited:.3g} s "
                                   f"({skipped} bytes of noise)") from None
            raise e from None
        self.stray += skipped
        hdr = self._take(3, time.monotonic() + self.byte_timeout, "header", hard)
        ftype, length = struct.unpack("<BH", hdr)
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"corrupted frame: length {length} exceeds {MAX_PAYLOAD}")
        rest = self._take(length + 2, time.monotonic() + self.byte_timeout, "payload", hard)
        payload, (crc,) = rest[:length], struct.unpack("<H", rest[length:])
        if crc != crc16(hdr + payload):
            raise ProtocolError(f"corrupted frame: CRC mismatch (type 0x{ftype:02x}, "
                                f"{length} bytes)")
        return ftype, payload


class Crc16(wiring.Component):
    """CRC-16/CCITT-FALSE, one byte per cycle (gateware).

    Attributes
    ----------
    clear : In(1)
        Reset the CRC to 0xFFFF (takes precedence over ``valid``).
    valid : In(1)
        Fold ``data`` into the CRC this cycle.
    data : In(8)
    crc : Out(16)
        The CRC of the bytes folded since the last ``clear``.
    """

    def __init__(self):
        super().__init__({"clear": In(1), "valid": In(1), "data": In(8),
                          "crc": Out(16, init=0xFFFF)})

    def elaborate(self, platform):
        m = Module()
        c = Signal(16)
        m.d.comb += c.eq(self.crc ^ (self.data << 8))
        for n in range(8):      # one signal per bit step keeps the expression tree small
            step = Signal(16, name=f"step{n}")
            m.d.comb += step.eq((c << 1)[:16] ^ (c[15].replicate(16) & 0x1021))
            c = step
        nxt = c
        with m.If(self.clear):
            m.d.sync += self.crc.eq(0xFFFF)
        with m.Elif(self.valid):
            m.d.sync += self.crc.eq(nxt)
        return m
