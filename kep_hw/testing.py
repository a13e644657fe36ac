# SPDX-License-Identifier: Apache-2.0
"""Test fixtures: random layers for the engine, a tiny random network for the system.

:func:`random_job` and :func:`random_layers` draw valid layers
(:class:`~kep_hw.host.driver.LayerJob`) for the engine's regressions. The network of
:func:`random_network` has every feature the board system handles: a dense 3x3 first layer,
sparse K=4 layers, a stride-2 layer with a 1x1 shortcut, residual adds, ReLU, then global
average pooling and a linear classifier on the host. :func:`reference_logits` computes it layer
by layer with the golden layer :func:`kep_train.golden.sparseconv.sparse_conv2d`.
:class:`ScriptedBoard` plays a (misbehaving) board on a pseudo-terminal or a socket for the host
runtime's tests and the fuzzer.
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import threading

import torch

from kep_common.errors import KepError
from kep_train.export.kepfile import KepLayer, KepModel
from kep_train.golden.sparseconv import sparse_conv2d

from kep_hw.gateware.params import EngineParams
from kep_hw.host.driver import LayerJob, dense_job
from kep_hw.system.plan import payload_image, run_tail, tensor_to_words
from kep_hw.system.protocol import ErrorCode, FrameReader, FrameType, encode_frame
from kep_hw.system.top import info_payload

__all__ = ["random_job", "random_layers", "random_network", "reference_activations",
           "reference_logits", "ScriptedBoard"]

SCALE = 1.0 / 64     # every activation scale of the test network (consistent for save_kep)


def random_job(gen: torch.Generator, *, cin: int, cout: int, h: int, w: int, k: int = 3,
               kept: int = 4, stride: int = 1, pad: int | None = None, relu: bool = True,
               residual: bool = False, extreme: bool = False, name: str = "random") -> LayerJob:
    """A random valid layer (deterministic given ``gen``).

    ``extreme`` draws values, activations and residuals only from {-128, 127} and uses large
    multipliers, to exercise products like -128 * -128 and saturation.
    """
    if pad is None:
        pad = 1 if k == 3 else 0

    def i8(*shape):
        if extreme:
            return torch.where(torch.rand(*shape, generator=gen) < 0.5,
                               torch.tensor(-128), torch.tensor(127)).to(torch.int8)
        return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)

    kk = k * k
    x = i8(cin, h, w)
    scores = torch.rand(cout, cin, kk, generator=gen)
    index = scores.argsort(dim=2)[..., :kept].sort(dim=2).values.to(torch.uint8)
    values = i8(cout, cin, kept)
    # requantization on the scale of the accumulator (std about 74^2 * sqrt(Cin * K) for
    # uniform int8 operands), so that the outputs spread over the int8 range (std about 24-48,
    # the tails saturated) instead of saturating: a wrong operand then changes the output
    acc_std = 74.0 ** 2 * max(1, cin * kept) ** 0.5
    bias = (torch.rand(cout, generator=gen) * 4 - 2) * acc_std
    bias = bias.round().to(torch.int32)
    mult = torch.randint(1, 2**16, (cout,), generator=gen, dtype=torch.int64)
    shift = (torch.log2(acc_std * mult.double() / 48).floor().long()
             + torch.randint(0, 2, (cout,), generator=gen)).clamp(1, 47)
    # the residual term on the scale of the product: res * res_mult about acc * mult
    res_hi = (acc_std * mult.double() / 74).clamp(1, 2**24 - 1).long()
    res_mult = (torch.rand(cout, generator=gen, dtype=torch.float64) * res_hi).long()
    if extreme:
        mult[:] = 2**16 - 1
        shift[:] = torch.randint(1, 48, (cout,), generator=gen)
        bias = torch.randint(-2**31, 2**31 - 1, (cout,), generator=gen, dtype=torch.int64)
        bias = bias.to(torch.int32)
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    res = i8(cout, ho, wo) if residual else None
    if not residual:
        res_mult = torch.zeros(cout, dtype=torch.int64)
    return LayerJob(x=x, values=values, index=index, bias=bias, mult=mult, shift=shift,
                    res_mult=res_mult, k=k, stride=stride, pad=pad, relu=relu, residual=res,
                    name=name)


def random_layers(seed: int, n: int, params: EngineParams, *, max_hw: int = 7,
                  max_c: int = 40) -> list[LayerJob]:
    """``n`` random valid layers for the regression (deterministic given ``seed``).

    Shapes, strides, kernel size (3x3 or 1x1), K (0 .. k*k), ReLU, residual, dense mode and
    extreme values (only -128 / 127) are all drawn at random, within ``params``' limits.
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    jobs = []
    for t in range(n):
        k = 3 if draw(0, 3) else 1
        kept = draw(0, k * k)
        stride = draw(1, 2)
        pad = 1 if k == 3 else draw(0, 1)
        cin = draw(1, min(max_c, params.max_cin))
        cout = draw(1, min(max_c, params.max_cout))
        h = draw(max(1, k - 2 * pad), min(max_hw, params.max_hw))
        w = draw(max(1, k - 2 * pad), min(max_hw, params.max_hw))
        job = random_job(gen, cin=cin, cout=cout, h=h, w=w, k=k, kept=kept, stride=stride,
                         pad=pad, relu=bool(draw(0, 1)), residual=bool(draw(0, 1)),
                         extreme=draw(0, 5) == 0, name=f"rand{t}")
        if draw(0, 7) == 0:
            job = dense_job(job)
            job.name = f"rand{t}:dense"
        jobs.append(job)
    return jobs


def _conv(gen, name, inp, cin, cout, h, *, k=3, stride=1, K=None, relu=True, residual=None):
    pad = 1 if k == 3 else 0
    ho = (h + 2 * pad - k) // stride + 1
    kk = k * k
    K = kk if K is None else K
    values = torch.randint(-128, 128, (cout, cin, K), generator=gen, dtype=torch.int64)
    perm = torch.argsort(torch.rand(cout, cin, kk, generator=gen), dim=2)[..., :K]
    index = torch.sort(perm, dim=2).values
    bias = torch.randint(-2**14, 2**14, (cout,), generator=gen, dtype=torch.int64)
    fan = cin * K * 128 * 64
    shift = torch.full((cout,), max(1, fan.bit_length()), dtype=torch.int64)
    mult = torch.randint(2**14, 2**16, (cout,), generator=gen, dtype=torch.int64)
    res_mult = (torch.randint(2**20, 2**24, (cout,), generator=gen, dtype=torch.int64)
                >> max(0, 24 - int(shift[0]))) if residual else torch.zeros(cout,
                                                                            dtype=torch.int64)
    common = dict(name=name, op="conv", input=inp, in_shape=(cin, h, h), out_shape=(cout, ho, ho),
                  kernel_size=k, stride=stride, padding=pad, relu=relu, residual=residual,
                  bias=bias.to(torch.int32), mult=mult.to(torch.int32),
                  shift=shift.to(torch.int32), res_mult=res_mult.to(torch.int32),
                  w_scale=torch.ones(cout), in_scale=SCALE, out_scale=SCALE)
    if K == kk:
        dense = torch.zeros(cout, cin, kk, dtype=torch.int64)
        dense.scatter_(2, index, values)
        return KepLayer(sparse=False, weight=dense.view(cout, cin, k, k).to(torch.int8),
                        **common), ho
    return KepLayer(sparse=True, values=values.to(torch.int8), index=index.to(torch.uint8),
                    **common), ho


def random_network(seed: int = 0, *, size: int = 8, width: int = 8,
                   classes: int = 10, maxpool: bool = False) -> KepModel:
    """A small random network (input ``[3, size, size]``), deterministic given ``seed``;
    ``maxpool=True`` puts a 2x2 stride-2 max pooling layer (``pool0``) after the first conv,
    read by the first block's conv and residual (``size`` divisible by 4)."""
    gen = torch.Generator().manual_seed(seed)
    w1, w2 = width, 2 * width
    layers = []
    c0, h = _conv(gen, "conv0", "input", 3, w1, size)
    first = [c0]
    src = "conv0"
    if maxpool:
        first.append(KepLayer(name="pool0", op="maxpool", input="conv0",
                              in_shape=(w1, h, h), out_shape=(w1, h // 2, h // 2),
                              kernel_size=2, stride=2, padding=0, in_scale=SCALE,
                              out_scale=SCALE))
        src, h = "pool0", h // 2
    b1, _ = _conv(gen, "b1.conv1", src, w1, w1, h, K=4)
    b2, _ = _conv(gen, "b1.conv2", "b1.conv1", w1, w1, h, K=4, residual=src)
    c3, h2 = _conv(gen, "b2.conv1", "b1.conv2", w1, w2, h, stride=2, K=4)
    sc, _ = _conv(gen, "b2.shortcut", "b1.conv2", w1, w2, h, k=1, stride=2, relu=False)
    c4, _ = _conv(gen, "b2.conv2", "b2.conv1", w2, w2, h2, K=4, residual="b2.shortcut")
    layers = first + [b1, b2, c3, sc, c4]
    layers.append(KepLayer(name="pool", op="avgpool", input="b2.conv2",
                           in_shape=(w2, h2, h2), out_shape=(w2,), in_scale=SCALE,
                           out_scale=SCALE / (h2 * h2)))
    layers.append(KepLayer(
        name="fc", op="linear", input="pool", in_shape=(w2,), out_shape=(classes,),
        in_scale=SCALE / (h2 * h2), out_scale=SCALE, w_scale=torch.ones(classes),
        weight=torch.randint(-127, 128, (classes, w2), generator=gen, dtype=torch.int8),
        bias=torch.randint(-1000, 1000, (classes,), generator=gen, dtype=torch.int32)))
    meta = {"model_name": "random-test", "dataset": "random", "num_classes": classes,
            "input_shape": [3, size, size], "input_scale": SCALE,
            "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
    return KepModel(layers=layers, meta=meta)


def reference_activations(kep: KepModel, x: torch.Tensor) -> dict:
    """int8 output ``[C, H, W]`` of every conv and max pooling layer for one int8 image
    ``[C, H, W]``."""
    acts = {"input": x.unsqueeze(0)}
    for layer in kep.layers:
        if layer.op == "maxpool":
            p = layer.padding
            xf = torch.nn.functional.pad(acts[layer.input].to(torch.float32), (p, p, p, p),
                                         value=-128.0)
            acts[layer.name] = torch.nn.functional.max_pool2d(
                xf, layer.kernel_size, layer.stride).to(torch.int8)
            continue
        if layer.op != "conv":
            continue
        values, index = layer.planes()
        res = acts[layer.residual] if layer.residual is not None else None
        acts[layer.name] = sparse_conv2d(
            acts[layer.input], values, index, layer.bias, layer.mult, layer.shift,
            kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
            relu=layer.relu, residual=res, res_mult=layer.res_mult if res is not None else None)
    return {k: v[0] for k, v in acts.items()}


def reference_logits(kep: KepModel, x: torch.Tensor) -> torch.Tensor:
    """int32 logits (as int64) of one int8 image ``[C, H, W]``."""
    acts = reference_activations(kep, x)
    tail = [layer for layer in kep.layers if layer.op in ("avgpool", "linear")]
    return run_tail(tail, acts[tail[0].input])


class _Stopped(Exception):
    """The scripted board was closed (or the host closed its end)."""


class ScriptedBoard:
    """A board played by a thread from a script, at the far end of a pseudo-terminal or a TCP
    socket, for testing the host runtime against a misbehaving peer (and for fuzzing it).

    ``with ScriptedBoard(plan, "drip") as board:`` then open ``board.port`` with pyserial (a
    pty path, or ``socket://127.0.0.1:N`` with ``transport="socket"``). The board answers
    ``PING`` with the ``INFO`` of ``plan``, ``IMAGE`` with ``RESULT`` (in streamed mode after a
    ``NEED`` for each layer, each answered by the host's ``WRITE`` frames and ``GO``), and
    misbehaves as ``behaviour`` says:

    ``"good"``
        No misbehaviour; the ``RESULT`` holds the golden logits (and, after ``IMAGE_FMAP`` or
        for a plan without a head, the golden last conv output) when ``kep`` is given
        (:func:`reference_activations`), else zeros.
    ``"silent"``
        Never answers anything.
    ``"hangup"``
        Closes its end when the frame ``at`` arrives.
    ``"garbage"``
        Answers ``at`` with ``garbage`` bytes of noise, then nothing.
    ``"drip"``
        Answers ``at`` (and everything after it) correctly, one byte every ``drip`` seconds.
    ``"need-loop"``
        Answers ``IMAGE`` with ``NEED`` and every ``GO`` with another ``NEED`` (layers 0, 1,
        ..., then again from 0), never with ``RESULT``.
    ``"wrong-info"``, ``"short-info"``, ``"zero-clock"``
        An ``INFO`` with another model id, one byte short, or with a clock of 0 kHz.
    ``"error"``, ``"bad-crc"``, ``"unexpected"``
        Answers ``at`` with an ``ERROR`` frame (code 4), with its frame with a corrupted CRC,
        or with a frame of the wrong type.
    ``"bad-result"``
        A ``RESULT`` one byte short.

    Parameters
    ----------
    plan : NetworkPlan
        The network the board claims to run.
    behaviour : str
        One of :attr:`BEHAVIOURS`.
    at : str
        ``"PING"`` or ``"IMAGE"``: the frame whose answer misbehaves (hangup, garbage, drip,
        error, bad-crc, unexpected).
    streamed : bool
        Report streamed weights and ask for each layer.
    kep : KepModel, optional
        The network, for golden ``RESULT`` payloads.
    clk_khz : int
        Clock reported in ``INFO``.
    px : int
        Px reported in ``INFO``.
    drip : float
        Seconds between two bytes for ``"drip"``.
    garbage : int
        Bytes of noise for ``"garbage"``.
    seed : int
        Seed of the noise.
    transport : str
        ``"pty"`` or ``"socket"``.
    cycles : int
        The cycle count in ``RESULT``.

    Attributes
    ----------
    port : str
        What the host opens.
    received : list
        Types of the valid frames the board received, in order.
    """

    BEHAVIOURS = ("good", "silent", "hangup", "garbage", "drip", "need-loop", "wrong-info",
                  "short-info", "zero-clock", "error", "bad-crc", "unexpected", "bad-result")

    def __init__(self, plan, behaviour: str = "good", *, at: str = "PING",
                 streamed: bool = False, kep=None, clk_khz: int = 50_000, px: int = 1,
                 drip: float = 0.05, garbage: int = 2000, seed: int = 0,
                 transport: str = "pty", cycles: int = 1234):
        if behaviour not in self.BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {self.BEHAVIOURS}, got {behaviour!r}")
        if at not in ("PING", "IMAGE"):
            raise ValueError(f"at must be 'PING' or 'IMAGE', got {at!r}")
        if transport not in ("pty", "socket"):
            raise ValueError(f"transport must be 'pty' or 'socket', got {transport!r}")
        self.plan, self.behaviour, self.at, self.streamed = plan, behaviour, at, streamed
        self.kep, self.clk_khz, self.px, self.drip = kep, clk_khz, px, drip
        self.garbage, self.transport, self.cycles = garbage, transport, cycles
        self.rng = random.Random(seed)
        self.received: list[int] = []
        self._result_hook = None           # tests: rewrite each RESULT payload
        self._stop = threading.Event()
        self._dripping = False
        self._fd = self._slave = self._listener = self._conn = None
        self._thread = None
        self.port = ""

    # lifecycle

    def __enter__(self) -> "ScriptedBoard":
        if self.transport == "pty":
            import tty                          # POSIX only
            self._fd, self._slave = os.openpty()
            tty.setraw(self._slave)             # no echo, no line discipline
            os.set_blocking(self._fd, False)
            self.port = os.ttyname(self._slave)
        else:
            self._listener = socket.create_server(("127.0.0.1", 0))
            self._listener.settimeout(0.05)
            self.port = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, name="scripted-board", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._hang_up()

    def _hang_up(self) -> None:
        for closer in (self._conn, self._listener):
            if closer is not None:
                closer.close()
        self._conn = self._listener = None
        for fd in (self._fd, self._slave):
            if fd is not None:
                os.close(fd)
        self._fd = self._slave = None

    # bytes

    def _recv(self, n: int) -> bytes:
        if self._stop.is_set():
            raise _Stopped
        if self.transport == "socket":
            while self._conn is None:
                try:
                    self._conn, _ = self._listener.accept()
                    self._conn.settimeout(0.05)
                except socket.timeout:
                    if self._stop.is_set():
                        raise _Stopped from None
            try:
                data = self._conn.recv(n)
            except socket.timeout:
                return b""
            except OSError:
                raise _Stopped from None
            if not data:                        # the host closed the connection
                raise _Stopped
            return data
        ready, _, _ = select.select([self._fd], [], [], 0.05)
        if not ready:
            return b""
        try:
            return os.read(self._fd, n)
        except BlockingIOError:
            return b""
        except OSError:                         # EIO: the host's end is closed
            raise _Stopped from None

    def _send(self, data: bytes) -> None:
        if self._dripping:
            for i in range(len(data)):
                if self._stop.wait(self.drip):
                    raise _Stopped
                self._send_now(data[i:i + 1])
        else:
            self._send_now(data)

    def _send_now(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._stop.is_set():
                raise _Stopped
            try:
                if self.transport == "socket":
                    sent = self._conn.send(view)
                else:
                    select.select([], [self._fd], [], 0.05)
                    sent = os.write(self._fd, view)
            except (BlockingIOError, socket.timeout):
                continue
            except OSError:
                raise _Stopped from None
            view = view[sent:]

    def _frame(self, ftype: int, payload: bytes = b"", *, misbehave: bool = False) -> None:
        frame = bytearray(encode_frame(ftype, payload))
        if misbehave and self.behaviour == "bad-crc":
            frame[-1] ^= 0xFF
        self._send(bytes(frame))

    # the board

    def _info(self) -> bytes:
        clk = 0 if self.behaviour == "zero-clock" else self.clk_khz * 1000
        info = bytearray(info_payload(self.plan, streamed=self.streamed, clk_hz=clk,
                                      px=self.px))
        if self.behaviour == "wrong-info":
            mid = int.from_bytes(info[10:14], "little") ^ 0x5A5A5A5A
            info[10:14] = mid.to_bytes(4, "little")
        if self.behaviour == "short-info":
            del info[-1]
        return bytes(info)

    def _result(self, image: bytes, fmap: bool) -> bytes:
        plan = self.plan
        n = plan.out_words * plan.lanes
        logits = bytes(4 * plan.classes)
        if self.kep is not None and len(image) == plan.image_bytes:
            x = payload_image(image, plan.in_shape)
            out = reference_activations(self.kep, x)[plan.layers[-1].name]
            data = b"".join(w.to_bytes(plan.lanes, "little")
                            for w in tensor_to_words(out, plan.lanes))
            if plan.classes:
                logits = struct.pack(f"<{plan.classes}i", *run_tail(plan.tail, out).tolist())
        else:
            data = bytes(n)
        if plan.classes and not fmap:
            data = b""
        payload = self.cycles.to_bytes(4, "little") + logits + data
        if self._result_hook is not None:         # tests: a board that computes wrongly
            payload = self._result_hook(payload)
        return payload[:-1] if self.behaviour == "bad-result" else payload

    def _answer(self, ftype: int, payload: bytes, state: dict) -> None:
        """Answer one valid frame; ``state`` holds the layer asked for and the image."""
        name = {FrameType.PING: "PING", FrameType.IMAGE: "IMAGE",
                FrameType.IMAGE_FMAP: "IMAGE"}.get(ftype)
        mis = name is not None and name == self.at
        if mis and self.behaviour == "hangup":
            raise _Stopped
        if mis and self.behaviour == "drip":
            self._dripping = True
        if mis and self.behaviour == "garbage":
            self._send(bytes(self.rng.randrange(256) for _ in range(self.garbage)))
            return
        if mis and self.behaviour == "error":
            self._frame(FrameType.ERROR, bytes([ErrorCode.STATE, ftype]))
            return
        if mis and self.behaviour == "unexpected":
            self._frame(FrameType.RESULT if ftype == FrameType.PING else FrameType.INFO,
                        b"\x00")
            return
        convs = self.plan.conv_layers            # the layers that need weights
        layers = len(convs)
        if ftype == FrameType.PING:
            self._frame(FrameType.INFO, self._info(), misbehave=mis)
        elif ftype in (FrameType.IMAGE, FrameType.IMAGE_FMAP):
            state["image"], state["layer"] = payload, 0
            state["fmap"] = ftype == FrameType.IMAGE_FMAP
            if self.streamed or self.behaviour == "need-loop":
                self._frame(FrameType.NEED, bytes([convs[0]]), misbehave=mis)
            else:
                self._frame(FrameType.RESULT, self._result(payload, state["fmap"]),
                            misbehave=mis)
        elif ftype == FrameType.GO and "layer" in state:
            state["layer"] += 1
            if self.behaviour == "need-loop":
                self._frame(FrameType.NEED, bytes([convs[state["layer"] % layers]]))
            elif state["layer"] < layers:
                self._frame(FrameType.NEED, bytes([convs[state["layer"]]]))
            else:
                self._frame(FrameType.RESULT, self._result(state.pop("image"),
                                                           state.get("fmap", False)))
                del state["layer"]

    def _serve(self) -> None:
        reader = FrameReader(self._recv, timeout=3600, byte_timeout=1.0)
        state: dict = {}
        try:
            while True:
                try:
                    ftype, payload = reader.read_frame()
                except KepError:                # a bad frame from the host: drop it
                    continue
                self.received.append(ftype)
                if self.behaviour != "silent":
                    self._answer(ftype, payload, state)
        except _Stopped:
            pass
        finally:
            if self.behaviour == "hangup" or not self._stop.is_set():
                self._hang_up()


def run_unit(m, unit, *, port, reads: int, setup=None) -> tuple[list, int]:
    """Simulate a start/busy unit inside module ``m`` (Amaranth simulator): apply ``setup(ctx)``,
    strobe ``unit.start``, count the cycles until ``unit.busy`` falls (the start cycle
    included), then read addresses ``0 .. reads-1`` through the read port ``port`` (latency
    1). Returns ``(values, cycles)``."""
    from amaranth.sim import Simulator
    out = {}

    async def bench(ctx):
        if setup is not None:
            setup(ctx)
        ctx.set(unit.start, 1)
        await ctx.tick()
        ctx.set(unit.start, 0)
        cycles = 1
        while ctx.get(unit.busy):
            await ctx.tick()
            cycles += 1
            assert cycles < 1_000_000, "the unit never finished"
        values = []
        for a in range(reads):
            ctx.set(port.addr, a)
            await ctx.tick()
            values.append(ctx.get(port.data))
        out["values"], out["cycles"] = values, cycles

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out["values"], out["cycles"]
