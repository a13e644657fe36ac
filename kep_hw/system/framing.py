# SPDX-License-Identifier: Apache-2.0
"""The board side of the framed UART protocol: frame receiver and frame transmitter.

:class:`FrameReceiver` parses the bytes of the UART receiver into frames
(:mod:`kep_hw.system.protocol`): it checks type, length, state and CRC, writes the payload of an
``IMAGE`` frame into the input buffer and, in streamed mode, the words of ``WRITE`` frames into
the weight and parameter memories; a valid frame ends in a one-cycle strobe (``start``, ``go``,
``ping``), a bad one in an error report. :class:`FrameTransmitter` sends the board's frames
(``ERROR``, ``RESULT``, ``NEED``, ``INFO``, in this priority) to the UART transmitter.

Each request to the transmitter (``err``, ``ping``, ``need``, ``result``) sets a pending flag
of its kind, cleared when its frame starts: requests of one kind that arrive before their frame
has started, or in the cycle it starts, give a single frame.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from kep_hw.gateware.layouts import PARAM_WORD_BITS, WEIGHT_ELEM_BITS, ErrorReport
from kep_hw.system.protocol import MAX_PAYLOAD, SYNC, Crc16, ErrorCode, FrameType

__all__ = ["ErrorReport", "FrameReceiver", "FrameTransmitter"]

#: A rejected frame, the payload of an ``ERROR`` frame: the :class:`ErrorCode` and the type of
#: the offending frame.

#: Bits of a memory address in a ``WRITE`` frame.
WRITE_ADDR_BITS = 16


def _positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class FrameReceiver(wiring.Component):
    """Frames from the UART receiver's bytes: image loader, streamed weight writes, errors.

    A frame is checked while it arrives: a length above :data:`MAX_PAYLOAD` is reported at once
    (``LENGTH``), then the receiver waits for the next ``SYNC`` byte; an unknown type
    (``TYPE``), a wrong length (``LENGTH``) or a frame not allowed now (``STATE``: ``IMAGE``
    while running, ``WRITE`` unless streamed and idle or waiting for ``GO``, ``GO`` while not
    waiting) is reported after its CRC, a CRC mismatch (``CRC``) takes precedence. More than
    ``byte_timeout`` cycles without a byte inside a frame drop it (``TIMEOUT``).

    Latencies: every output is combinational from the byte stream. An image word (``lanes``
    bytes) is written in the cycle its last byte arrives, a ``WRITE`` word likewise; ``start``
    (``IMAGE``), ``go`` (``GO``), ``ping`` (``PING``) and ``err`` are one-cycle strobes in the
    cycle the frame's last CRC byte arrives (``err`` of a too-long or timed-out frame in the
    cycle that decides it).

    Parameters
    ----------
    lanes : int
        G, bytes (int8 channels) per activation word.
    in_words : int
        Activation words of the input tensor.
    in_channels : int
        C of the input tensor. An ``IMAGE`` payload is the tensor in HWC order, C bytes per
        pixel (no padding); each pixel becomes ``ceil(C / lanes)`` words, lanes beyond C zero.
    addr_width : int
        Address bits of the ``img`` write port.
    byte_timeout : int
        Cycles without a byte after which a partial frame is dropped and reported.
    streamed : bool
        Accept ``WRITE`` frames (and have the ``wt_wr`` and ``prm_wr`` ports).
    po : int
        Po, the weight elements per weight word.

    Attributes
    ----------
    i : In(stream.Signature(8))
        Bytes from the UART receiver (always ready).
    running, waiting_go, pending : In(1)
        The sequencer's state: a network run is in progress / it waits for ``GO`` / an image
        waits for its run.
    start, go, ping : Out(1)
        A valid ``IMAGE`` or ``IMAGE_FMAP`` (input buffer written: run the network), ``GO``
        (while waiting for it) or ``PING`` (answer with ``INFO``) frame ended.
    fmap : Out(1)
        The last image came in an ``IMAGE_FMAP`` frame (its ``RESULT`` also carries the last
        conv output); set with ``start``, held until the next image.
    err : Out(stream.Signature(ErrorReport, always_ready=True))
        A frame was rejected.
    img : In(WritePort.Signature)
        Writes of the input image, word ``n`` at address ``n``.
    wt_wr, prm_wr : In(WritePort.Signature)
        Weight and parameter words of ``WRITE`` frames (memory 0 and 1), streamed mode only.
    """

    def __init__(self, *, lanes: int, in_words: int, addr_width: int, byte_timeout: int,
                 streamed: bool, po: int, in_channels: int):
        for name, value in (("lanes", lanes), ("in_words", in_words),
                            ("addr_width", addr_width), ("byte_timeout", byte_timeout),
                            ("po", po), ("in_channels", in_channels)):
            _positive(name, value)
        wpp = -(-in_channels // lanes)
        if in_words % wpp:
            raise ValueError(f"{in_words!r} input words are not whole pixels of "
                             f"{in_channels!r} channels in words of {lanes!r}")
        self.in_channels = in_channels
        self.in_bytes = in_words // wpp * in_channels
        if self.in_bytes > MAX_PAYLOAD:
            raise ValueError(f"an image of {self.in_bytes!r} bytes exceeds one frame")
        self.lanes, self.in_words, self.byte_timeout = lanes, in_words, byte_timeout
        self.streamed, self.po = bool(streamed), po
        ports = {
            "i": In(stream.Signature(unsigned(8))),
            "running": In(1),
            "waiting_go": In(1),
            "pending": In(1),
            "start": Out(1),
            "go": Out(1),
            "ping": Out(1),
            "fmap": Out(1),
            "err": Out(stream.Signature(ErrorReport, always_ready=True)),
            "img": In(WritePort.Signature(addr_width=addr_width, shape=unsigned(8 * lanes))),
        }
        if self.streamed:
            ports["wt_wr"] = In(WritePort.Signature(addr_width=WRITE_ADDR_BITS,
                                                    shape=unsigned(WEIGHT_ELEM_BITS * po)))
            ports["prm_wr"] = In(WritePort.Signature(addr_width=WRITE_ADDR_BITS,
                                                     shape=unsigned(PARAM_WORD_BITS)))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        G = self.lanes
        rx_byte = self.i.payload
        rx_valid = self.i.valid
        m.d.comb += self.i.ready.eq(1)
        m.submodules.crc = rx_crc = Crc16()
        m.d.comb += [rx_crc.data.eq(rx_byte)]
        ftype = Signal(8)
        flen = Signal(16)
        fcnt = Signal(16)
        crc_lo = Signal(8)
        idle_cnt = Signal(range(self.byte_timeout + 1))
        bad = Signal(8)                  # error code decided while receiving (0 = none)
        running, waiting_go = self.running, self.waiting_go
        # image loader
        C = self.in_channels
        img_word = Signal(8 * G)
        img_lane = Signal(range(G))
        img_ch = Signal(range(C))
        img_addr = Signal.like(self.img.addr)
        img_en = Signal()
        # weight / param writes (streamed mode)
        wt_bytes = (WEIGHT_ELEM_BITS * self.po + 7) // 8
        prm_bytes = (PARAM_WORD_BITS + 7) // 8
        wr_sel = Signal(8)
        wr_addr = Signal(WRITE_ADDR_BITS)
        wr_word = Signal(8 * max(wt_bytes, prm_bytes))
        wr_bc = Signal(range(max(wt_bytes, prm_bytes) + 1))
        wr_wt_en = Signal()
        wr_prm_en = Signal()

        m.d.comb += self.err.payload.type.eq(ftype)

        def error(code):
            return [self.err.valid.eq(1), self.err.payload.code.eq(code)]

        in_bytes = self.in_bytes

        def tmo():
            # inter-byte timeout inside a frame: drop it and report
            with m.If(~rx_valid & (idle_cnt == self.byte_timeout)):
                m.d.comb += error(ErrorCode.TIMEOUT)
                m.next = "SYNC"

        # frame parser
        with m.FSM(name="rx") as rx_fsm:
            with m.State("SYNC"):
                with m.If(rx_valid & (rx_byte == SYNC)):
                    m.d.comb += rx_crc.clear.eq(1)
                    m.d.sync += bad.eq(0)
                    m.next = "TYPE"
            with m.State("TYPE"):
                tmo()
                with m.If(rx_valid):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += ftype.eq(rx_byte)
                    m.next = "LEN0"
            with m.State("LEN0"):
                tmo()
                with m.If(rx_valid):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += flen[:8].eq(rx_byte)
                    m.next = "LEN1"
            with m.State("LEN1"):
                tmo()
                with m.If(rx_valid):
                    m.d.comb += rx_crc.valid.eq(1)
                    length = Cat(flen[:8], rx_byte)
                    m.d.sync += [flen[8:].eq(rx_byte), fcnt.eq(0), img_lane.eq(0),
                                 img_ch.eq(0), img_addr.eq(0), wr_bc.eq(0)]
                    with m.If(length > MAX_PAYLOAD):
                        m.d.comb += error(ErrorCode.LENGTH)
                        m.next = "SYNC"
                    with m.Else():
                        with m.Switch(ftype):
                            with m.Case(FrameType.IMAGE, FrameType.IMAGE_FMAP):
                                with m.If(length != in_bytes):
                                    m.d.sync += bad.eq(ErrorCode.LENGTH)
                                with m.Elif(self.pending):
                                    m.d.sync += bad.eq(ErrorCode.STATE)
                            with m.Case(FrameType.WRITE):
                                with m.If(length < 3):
                                    m.d.sync += bad.eq(ErrorCode.LENGTH)
                                with m.Elif(not self.streamed or (running & ~waiting_go)):
                                    m.d.sync += bad.eq(ErrorCode.STATE)
                            with m.Case(FrameType.PING, FrameType.GO):
                                with m.If(length != 0):
                                    m.d.sync += bad.eq(ErrorCode.LENGTH)
                            with m.Default():
                                m.d.sync += bad.eq(ErrorCode.TYPE)
                        with m.If(length == 0):
                            m.next = "CRC0"
                        with m.Else():
                            m.next = "PAY"
            with m.State("PAY"):
                tmo()
                with m.If(rx_valid):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += fcnt.eq(fcnt + 1)
                    with m.If(fcnt == flen - 1):
                        m.next = "CRC0"
                    with m.If(bad == 0):
                        with m.Switch(ftype):
                            with m.Case(FrameType.IMAGE, FrameType.IMAGE_FMAP):
                                # C bytes per pixel -> ceil(C/G) words, unused lanes 0
                                m.d.sync += [img_word.word_select(img_lane, 8).eq(rx_byte),
                                             img_lane.eq(img_lane + 1),
                                             img_ch.eq(Mux(img_ch == C - 1, 0, img_ch + 1))]
                                with m.If((img_lane == G - 1) | (img_ch == C - 1)):
                                    m.d.comb += img_en.eq(1)
                                    m.d.sync += img_lane.eq(0)
                            with m.Case(FrameType.WRITE):
                                with m.If(fcnt == 0):
                                    m.d.sync += wr_sel.eq(rx_byte)
                                with m.Elif(fcnt == 1):
                                    m.d.sync += wr_addr[:8].eq(rx_byte)
                                with m.Elif(fcnt == 2):
                                    m.d.sync += wr_addr[8:].eq(rx_byte)
                                with m.Else():
                                    m.d.sync += [wr_word.word_select(wr_bc, 8).eq(rx_byte),
                                                 wr_bc.eq(wr_bc + 1)]
                                    with m.If((wr_sel == 0) & (wr_bc == wt_bytes - 1)):
                                        m.d.comb += wr_wt_en.eq(1)
                                    with m.If((wr_sel == 1) & (wr_bc == prm_bytes - 1)):
                                        m.d.comb += wr_prm_en.eq(1)
            with m.State("CRC0"):
                tmo()
                with m.If(rx_valid):
                    m.d.sync += crc_lo.eq(rx_byte)
                    m.next = "CRC1"
            with m.State("CRC1"):
                tmo()
                with m.If(rx_valid):
                    m.next = "SYNC"
                    with m.If(Cat(crc_lo, rx_byte) != rx_crc.crc):
                        m.d.comb += error(ErrorCode.CRC)
                    with m.Elif(bad != 0):
                        m.d.comb += error(bad)
                    with m.Else():
                        with m.Switch(ftype):
                            with m.Case(FrameType.IMAGE, FrameType.IMAGE_FMAP):
                                m.d.comb += self.start.eq(1)
                                m.d.sync += self.fmap.eq(ftype == FrameType.IMAGE_FMAP)
                            with m.Case(FrameType.GO):
                                with m.If(waiting_go):
                                    m.d.comb += self.go.eq(1)
                                with m.Else():
                                    m.d.comb += error(ErrorCode.STATE)
                            with m.Case(FrameType.PING):
                                m.d.comb += self.ping.eq(1)   # answered with INFO
        with m.If(rx_valid | rx_fsm.ongoing("SYNC")):
            m.d.sync += idle_cnt.eq(0)
        with m.Elif(idle_cnt != self.byte_timeout):
            m.d.sync += idle_cnt.eq(idle_cnt + 1)

        # image loader write: G bytes -> one word
        with m.If(img_en):
            m.d.sync += img_addr.eq(img_addr + 1)
        img_lanes = [Mux(img_lane == lane, rx_byte,
                         Mux(img_lane > lane, img_word.word_select(lane, 8), 0))
                     for lane in range(G)]
        m.d.comb += [self.img.addr.eq(img_addr), self.img.data.eq(Cat(*img_lanes)),
                     self.img.en.eq(img_en)]

        # weight / param writes: the payload's words to consecutive addresses from its own
        if self.streamed:
            m.d.comb += [
                self.wt_wr.addr.eq(wr_addr),
                self.wt_wr.data.eq(Cat(wr_word[:8 * (wt_bytes - 1)], rx_byte)),
                self.wt_wr.en.eq(wr_wt_en),
                self.prm_wr.addr.eq(wr_addr),
                self.prm_wr.data.eq(Cat(wr_word[:8 * (prm_bytes - 1)], rx_byte)),
                self.prm_wr.en.eq(wr_prm_en),
            ]
            with m.If(wr_wt_en | wr_prm_en):
                m.d.sync += [wr_addr.eq(wr_addr + 1), wr_bc.eq(0)]
        return m


class FrameTransmitter(wiring.Component):
    """The board's frames to the UART transmitter: ``ERROR``, ``RESULT``, ``NEED``, ``INFO``.

    Requests are held until their frame starts (see the module docstring). Latencies: a
    request strobed in cycle ``c`` while the transmitter is idle has its ``SYNC`` byte offered
    on ``o`` in cycle ``c + 2`` (pending flag, then the idle state picks the highest-priority
    one). A frame is ``SYNC``, type, length, payload and CRC; each payload byte takes two cycles
    (its address, then the registered byte, since ``out`` reads with a latency of one cycle)
    before it is offered on ``o``.

    Parameters
    ----------
    info : bytes
        Payload of the ``INFO`` frame (:func:`kep_hw.system.top.info_payload`).
    lanes : int
        G, bytes per activation word.
    out_words : int
        Activation words of the last conv output.
    addr_width : int
        Address bits of the ``out`` read port.
    classes : int
        Logits of a ``RESULT`` (0: no head). A ``RESULT`` payload is the cycle count (u32), the
        ``classes`` int32 logits read through ``logits`` and, when ``fmap`` is high as it
        starts or ``classes`` is 0, the ``out_words * lanes`` bytes of the last conv output.

    Attributes
    ----------
    o : Out(stream.Signature(8))
        Bytes to the UART transmitter.
    err : In(stream.Signature(ErrorReport, always_ready=True))
        Send an ``ERROR`` frame.
    ping : In(1)
        Send the ``INFO`` frame.
    need : In(stream.Signature(8, always_ready=True))
        Send a ``NEED`` frame asking for the weights of the layer in the payload.
    result : In(1)
        Send a ``RESULT`` frame: ``cycles`` as it is when the frame starts, then the output
        tensor read through ``out``.
    cycles : In(32)
        The hardware cycle counter.
    out : In(ReadPort.Signature)
        Reads of the output buffer, word ``n`` at address ``n`` (latency 1).
    fmap : In(1)
        Send the last conv output in the ``RESULT`` too (read when the frame starts).
    result_busy : Out(1)
        A ``RESULT`` is requested and not yet sent to the end.
    logits : In(ReadPort.Signature(shape=signed(32)))
        Reads of the logits, class ``j`` at address ``j`` (latency 1; ``classes > 0`` only).
    """

    def __init__(self, *, info: bytes, lanes: int, out_words: int, addr_width: int,
                 classes: int = 0):
        for name, value in (("lanes", lanes), ("out_words", out_words),
                            ("addr_width", addr_width)):
            _positive(name, value)
        if not isinstance(classes, int) or classes < 0:
            raise ValueError(f"classes must be a non-negative integer, got {classes!r}")
        if len(info) > MAX_PAYLOAD or out_words * lanes + 4 + 4 * classes > MAX_PAYLOAD:
            raise ValueError(f"INFO of {len(info)!r} bytes or an output of {out_words!r} words "
                             f"of {lanes!r} bytes and {classes} logits exceeds one frame")
        self.info, self.lanes, self.out_words = bytes(info), lanes, out_words
        self.classes = classes
        logits = {}
        if classes:
            logits["logits"] = In(ReadPort.Signature(
                addr_width=max(1, (classes - 1).bit_length()), shape=signed(32)))
        super().__init__({
            **logits,
            "fmap": In(1),
            "result_busy": Out(1),
            "o": Out(stream.Signature(unsigned(8))),
            "err": In(stream.Signature(ErrorReport, always_ready=True)),
            "ping": In(1),
            "need": In(stream.Signature(unsigned(8), always_ready=True)),
            "result": In(1),
            "cycles": In(32),
            "out": In(ReadPort.Signature(addr_width=addr_width, shape=unsigned(8 * lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        G = self.lanes
        lg = G.bit_length() - 1
        m.submodules.crc = tx_crc = Crc16()
        info = self.info
        # the read data of the feature map and the logits through a register (one more cycle
        # per byte, PAYR2): no path from a block RAM's output through the byte multiplexers
        # into t_byte in one cycle (it limited the 12F build at 73.7 MHz)
        out_data = Signal.like(self.out.data, reset_less=True)
        m.d.sync += out_data.eq(self.out.data)

        # pending requests (a request in the cycle its frame starts is overridden there)
        req_err = Signal()
        err = Signal(ErrorReport)
        with m.If(self.err.valid):
            m.d.sync += [req_err.eq(1), err.eq(self.err.payload)]
        info_pending = Signal()
        with m.If(self.ping):
            m.d.sync += info_pending.eq(1)
        t_need = Signal(8)
        pend_need = Signal()
        pend_result = Signal()
        with m.If(self.need.valid):
            m.d.sync += [pend_need.eq(1), t_need.eq(self.need.payload)]
        with m.If(self.result):
            m.d.sync += pend_result.eq(1)

        # frame
        t_type = Signal(8)
        t_len = Signal(16)
        t_n = Signal(16)
        t_h = Signal(2)
        t_byte = Signal(8)
        t_cycles = Signal(32)
        t_err = Signal(ErrorReport)
        info_arr = Array(Const(b, 8) for b in info)
        hdr = Array([Const(SYNC, 8), t_type, t_len[:8], t_len[8:]])
        m.d.comb += tx_crc.data.eq(self.o.payload)
        out_bytes = self.out_words * G
        J = self.classes
        lbytes = 4 + 4 * J                  # cycles and logits: the RESULT without a feature map
        # read addresses follow the byte counter in every state, through a register (the
        # feature map's port is the buffers' only while no layer runs; the data is used in
        # PAYW, three cycles after the counter moved): no path runs from the counter's
        # subtraction through the buffers' address multiplexer into the block RAMs
        out_addr = Signal.like(self.out.addr, reset_less=True)
        m.d.sync += out_addr.eq((t_n - lbytes) >> lg)
        m.d.comb += self.out.addr.eq(out_addr)
        if J:
            logit_addr = Signal.like(self.logits.addr, reset_less=True)
            m.d.sync += logit_addr.eq((t_n - 4) >> 2)
            m.d.comb += self.logits.addr.eq(logit_addr)
            logit_q = Signal.like(self.logits.data, reset_less=True)
            m.d.sync += logit_q.eq(self.logits.data)
        # the byte's selects as registers that follow the counter (PAYW comes three cycles
        # after the counter moved): no path from the counter through a comparison or a
        # subtraction into the byte multiplexers in one cycle (15.75 ns on a P = 128 build)
        n_lt4 = Signal()
        n_ltl = Signal()
        out_sub = Signal(range(G))
        m.d.sync += [n_lt4.eq(t_n < 4), n_ltl.eq(t_n < lbytes),
                     out_sub.eq((t_n - lbytes)[:lg] if lg else 0)]
        # the byte of each source in a register of its own (PAYW), then the frame's source
        # (PAYX): the byte multiplexers and the source select are not one path into t_byte
        # (13.71 ns on a P = 128 build)
        b_err, b_info, b_cyc, b_out, b_logit = (
            Signal(8, name=f"t_b_{n}", reset_less=True)
            for n in ("err", "info", "cyc", "out", "logit"))
        with m.FSM(name="tx") as tx_fsm:
            with m.State("IDLE"):
                m.d.comb += tx_crc.clear.eq(1)
                m.d.sync += [t_n.eq(0), t_h.eq(0)]
                with m.If(req_err):
                    m.d.sync += [req_err.eq(0), t_type.eq(FrameType.ERROR), t_len.eq(2),
                                 t_err.eq(err)]
                    m.next = "HDR"
                with m.Elif(pend_result):
                    m.d.sync += [pend_result.eq(0), t_type.eq(FrameType.RESULT),
                                 t_cycles.eq(self.cycles)]
                    if J:
                        m.d.sync += t_len.eq(Mux(self.fmap, lbytes + out_bytes, lbytes))
                    else:
                        m.d.sync += t_len.eq(lbytes + out_bytes)
                    m.next = "HDR"
                with m.Elif(pend_need):
                    m.d.sync += [pend_need.eq(0), t_type.eq(FrameType.NEED), t_len.eq(1)]
                    m.next = "HDR"
                with m.Elif(info_pending):
                    m.d.sync += [info_pending.eq(0), t_type.eq(FrameType.INFO),
                                 t_len.eq(len(info))]
                    m.next = "HDR"
            with m.State("HDR"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(hdr[t_h])]
                with m.If(self.o.ready):
                    m.d.comb += tx_crc.valid.eq(t_h != 0)
                    m.d.sync += t_h.eq(t_h + 1)
                    with m.If(t_h == 3):
                        m.next = "PAYF"
            with m.State("PAYF"):
                with m.If(t_n == t_len):
                    m.next = "CRC0"
                with m.Else():
                    m.next = "PAYR"
            with m.State("PAYR"):           # the read address in its register
                m.next = "PAYR2"
            with m.State("PAYR2"):          # the read word on its way into out_data
                m.next = "PAYW"
            with m.State("PAYW"):           # each source's byte into its own register
                m.d.sync += [b_err.eq(t_err.as_value().word_select(t_n[:1], 8)),
                             b_info.eq(info_arr[t_n]),
                             b_cyc.eq(t_cycles.word_select(t_n[:2], 8)),
                             b_out.eq(out_data.word_select(out_sub, 8))]
                if J:
                    m.d.sync += b_logit.eq(logit_q.word_select(t_n[:2], 8))
                m.next = "PAYX"
            with m.State("PAYX"):           # the frame's source
                with m.Switch(t_type):
                    with m.Case(FrameType.ERROR):
                        m.d.sync += t_byte.eq(b_err)
                    with m.Case(FrameType.NEED):
                        m.d.sync += t_byte.eq(t_need)
                    with m.Case(FrameType.INFO):
                        m.d.sync += t_byte.eq(b_info)
                    with m.Case(FrameType.RESULT):
                        with m.If(n_lt4):
                            m.d.sync += t_byte.eq(b_cyc)
                        if J:
                            with m.Elif(n_ltl):
                                m.d.sync += t_byte.eq(b_logit)
                        with m.Else():
                            m.d.sync += t_byte.eq(b_out)
                m.next = "PAYS"
            with m.State("PAYS"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(t_byte)]
                with m.If(self.o.ready):
                    m.d.comb += tx_crc.valid.eq(1)
                    m.d.sync += t_n.eq(t_n + 1)
                    m.next = "PAYF"
            with m.State("CRC0"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(tx_crc.crc[:8])]
                with m.If(self.o.ready):
                    m.next = "CRC1"
            with m.State("CRC1"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(tx_crc.crc[8:])]
                with m.If(self.o.ready):
                    m.next = "IDLE"
        m.d.comb += self.result_busy.eq(pend_result | (~tx_fsm.ongoing("IDLE")
                                                        & (t_type == FrameType.RESULT)))
        return m
