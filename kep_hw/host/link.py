# SPDX-License-Identifier: Apache-2.0
"""Host side of the board link: talk to a board (or its simulation) over a byte transport.

The transport is anything with ``write(bytes)`` and ``read(n) -> bytes`` that returns early
with what it has after a short timeout: a ``serial.Serial`` opened on the board's UART, or the
same on the pseudo-terminal of the simulation (:mod:`kep_hw.bench.system_sim`). Every wait has a
deadline: a silent board raises :class:`~kep_hw.system.protocol.BoardTimeout`, a corrupted or
truncated frame :class:`~kep_hw.system.protocol.ProtocolError`, an ``ERROR`` frame from the board
:class:`~kep_hw.system.protocol.ProtocolError` naming the board's error code.
"""

from __future__ import annotations

import struct

import torch

from kep_common.errors import KepError

from kep_hw.gateware.images import tensor_to_words, words_to_tensor
from kep_hw.gateware.layouts import PARAM_WORD_BITS, WEIGHT_ELEM_BITS
from kep_hw.system.plan import NetworkPlan
from kep_hw.system.protocol import (MAX_PAYLOAD, PROTOCOL_VERSION, ErrorCode, FrameReader,
                                    FrameType, ProtocolError, encode_frame)

__all__ = ["BoardInfo", "BoardLink", "parse_info"]


class BoardInfo(dict):
    """The fields of an ``INFO`` frame: ``version``, ``po``, ``lanes``, ``streamed``,
    ``layers``, ``clk_khz``, ``model_id``, ``in_words``, ``out_words``, ``px`` (``po`` is Po,
    the output channels per group; the engine has ``P = po * px`` PEs)."""


def parse_info(payload: bytes) -> BoardInfo:
    """Decode an ``INFO`` payload.

    Raises
    ------
    ProtocolError
        If it has the wrong size.
    """
    if len(payload) != 18:
        raise ProtocolError(f"INFO frame of {len(payload)} bytes, expected 18")
    ver, po, lanes, streamed, layers, px, clk, mid, iw, ow = struct.unpack("<6BIIHH", payload)
    return BoardInfo(version=ver, po=po, lanes=lanes, streamed=bool(streamed), layers=layers,
                     clk_khz=clk, model_id=mid, in_words=iw, out_words=ow, px=max(px, 1))


class BoardLink:
    """Run a planned network on a board.

    Parameters
    ----------
    transport : object
        ``write(bytes)`` and ``read(n)``.
    plan : NetworkPlan
        The plan the board was built from (checked against the board's ``INFO``).
    timeout : float
        Seconds to wait for each answer (a whole network run included).
    byte_timeout : float
        Seconds allowed between two bytes of one frame.
    """

    def __init__(self, transport, plan: NetworkPlan, *, timeout: float = 10.0,
                 byte_timeout: float = 1.0):
        self.t = transport
        self.plan = plan
        self.reader = FrameReader(transport.read, timeout=timeout, byte_timeout=byte_timeout)
        self.info: BoardInfo | None = None

    def _expect(self, *types) -> tuple[int, bytes]:
        ftype, payload = self.reader.read_frame()
        if ftype == FrameType.ERROR:
            code = payload[0] if payload else 0
            try:
                name = ErrorCode(code).name
            except ValueError:
                name = f"code {code}"
            raise ProtocolError(f"board rejected a frame: {name} (frame type 0x"
                                f"{payload[1] if len(payload) > 1 else 0:02x})")
        if ftype not in types:
            raise ProtocolError(f"unexpected frame type 0x{ftype:02x} from the board")
        return ftype, payload

    def connect(self) -> BoardInfo:
        """``PING`` the board and check that it runs this plan.

        Raises
        ------
        KepError
            If the board runs another protocol version, P, lane count or network.
        """
        self.t.write(encode_frame(FrameType.PING))
        _, payload = self._expect(FrameType.INFO)
        info = parse_info(payload)
        if info["version"] != PROTOCOL_VERSION:
            raise KepError(f"board speaks protocol {info['version']}, host {PROTOCOL_VERSION}")
        want = self.plan.model_id(info["streamed"])
        if (info["po"], info["lanes"], info["layers"], info["model_id"]) != \
                (self.plan.po, self.plan.lanes, len(self.plan.layers), want):
            raise KepError("the board's bitstream was built for another model or --pes "
                           f"(board Po={info['po']}, {info['layers']} layers, id "
                           f"{info['model_id']:08x}; host Po={self.plan.po}, "
                           f"{len(self.plan.layers)} layers, id {want:08x})")
        self.info = info
        return info

    def _send_words(self, mem: int, words: list, word_bits: int) -> None:
        nbytes = (word_bits + 7) // 8
        per = (MAX_PAYLOAD - 3) // nbytes
        for start in range(0, len(words), per):
            chunk = words[start:start + per]
            payload = struct.pack("<BH", mem, start) + b"".join(
                w.to_bytes(nbytes, "little") for w in chunk)
            self.t.write(encode_frame(FrameType.WRITE, payload))

    def send_layer(self, n: int) -> None:
        """Stream layer ``n``'s weight and parameter words (streamed mode), then ``GO``."""
        lp = self.plan.layers[n]
        self._send_words(0, lp.wt_words, WEIGHT_ELEM_BITS * self.plan.po)
        self._send_words(1, lp.prm_words, PARAM_WORD_BITS)
        self.t.write(encode_frame(FrameType.GO))

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Run one int8 image ``[C, H, W]``; returns the last conv output and hardware cycles.

        Raises
        ------
        BoardTimeout, ProtocolError
            On a silent board or a bad frame.
        """
        if tuple(x.shape) != tuple(self.plan.in_shape):
            raise KepError(f"image shape {tuple(x.shape)} != network input {self.plan.in_shape}")
        words = tensor_to_words(x, self.plan.lanes)
        data = b"".join(w.to_bytes(self.plan.lanes, "little") for w in words)
        self.t.write(encode_frame(FrameType.IMAGE, data))
        while True:
            ftype, payload = self._expect(FrameType.NEED, FrameType.RESULT)
            if ftype == FrameType.NEED:
                if len(payload) != 1 or payload[0] >= len(self.plan.layers):
                    raise ProtocolError(f"bad NEED frame {payload!r}")
                self.send_layer(payload[0])
                continue
            want = 4 + self.plan.out_words * self.plan.lanes
            if len(payload) != want:
                raise ProtocolError(f"RESULT of {len(payload)} bytes, expected {want}")
            cycles = struct.unpack("<I", payload[:4])[0]
            lanes = self.plan.lanes
            out = [int.from_bytes(payload[i:i + lanes], "little")
                   for i in range(4, len(payload), lanes)]
            return words_to_tensor(out, self.plan.out_shape, lanes), cycles
