# SPDX-License-Identifier: Apache-2.0
"""Frame format: CRC, encoding, and the host reader's handling of corrupted, truncated and
missing frames (it must reject and report, never hang)."""

from __future__ import annotations

import math
import time

import pytest
from amaranth.sim import Simulator

from kep_hw.system.protocol import (MAX_PAYLOAD, SYNC, BoardTimeout, Crc16, FrameReader,
                                    FrameType, ProtocolError, check_seconds, crc16, encode_frame)


class FakePort:
    """A transport that returns queued bytes in small pieces, then nothing."""

    def __init__(self, data: bytes, piece: int = 3):
        self.data = bytearray(data)
        self.piece = piece

    def read(self, n):
        if not self.data:
            time.sleep(0.001)
            return b""
        out = bytes(self.data[:min(n, self.piece)])
        del self.data[:len(out)]
        return out


def test_crc16_check_value():
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


def test_encode_layout():
    f = encode_frame(FrameType.NEED, b"\x07")
    assert f[0] == SYNC and f[1] == 0x82 and f[2:4] == b"\x01\x00" and f[4] == 7
    assert int.from_bytes(f[5:7], "little") == crc16(f[1:5])
    with pytest.raises(ValueError):
        encode_frame(1, bytes(MAX_PAYLOAD + 1))


@pytest.mark.parametrize("payload", [b"", b"\x00", bytes(range(256)) * 3])
def test_round_trip(payload):
    r = FrameReader(FakePort(encode_frame(0x83, payload) + encode_frame(0x81, b"ab")).read,
                    timeout=1)
    assert r.read_frame() == (0x83, payload)
    assert r.read_frame() == (0x81, b"ab")


@pytest.mark.parametrize("pos", [1, 2, 4, 6, 8])
def test_corrupted_byte_rejected(pos):
    f = bytearray(encode_frame(0x83, b"hello"))
    f[pos] ^= 0x10
    r = FrameReader(FakePort(bytes(f)).read, timeout=0.3, byte_timeout=0.1)
    with pytest.raises(ProtocolError):
        r.read_frame()


def test_truncated_frame_reported_quickly():
    f = encode_frame(0x83, b"x" * 50)[:-10]
    r = FrameReader(FakePort(f).read, timeout=1, byte_timeout=0.1)
    t = time.monotonic()
    with pytest.raises(ProtocolError, match="truncated"):
        r.read_frame()
    assert time.monotonic() - t < 1.0


def test_silent_board_times_out():
    r = FrameReader(FakePort(b"").read, timeout=0.2)
    t = time.monotonic()
    with pytest.raises(BoardTimeout, match="no answer"):
        r.read_frame()
    assert 0.15 < time.monotonic() - t < 1.0


def test_stray_bytes_counted_then_frame_read():
    r = FrameReader(FakePort(b"\x00\x13" + encode_frame(0x81, b"z")).read, timeout=1)
    assert r.read_frame() == (0x81, b"z")
    assert r.stray == 2


def test_gateware_crc_matches_host():
    dut = Crc16()
    data = bytes([0x83, 0x05, 0x00]) + b"hello" + bytes([0, 255, 128])

    async def bench(ctx):
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        for n, b in enumerate(data):
            ctx.set(dut.valid, 1)
            ctx.set(dut.data, b)
            await ctx.tick()
            assert ctx.get(dut.crc) == crc16(data[:n + 1])
        ctx.set(dut.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


class DripPort:
    """A transport that hands out one byte every ``interval`` seconds."""

    def __init__(self, data: bytes, interval: float):
        self.data = bytearray(data)
        self.interval = interval

    def read(self, n):
        time.sleep(self.interval)
        if not self.data:
            return b""
        out = bytes(self.data[:1])
        del self.data[:1]
        return out


def test_drip_inside_byte_timeout_is_cut_by_deadline():
    # 300 bytes at 20 ms each would take 6 s, each gap well inside the 0.5 s byte timeout
    r = FrameReader(DripPort(encode_frame(0x83, b"y" * 300), 0.02).read, timeout=1,
                    byte_timeout=0.5)
    t = time.monotonic()
    with pytest.raises(BoardTimeout, match="still arriving: payload"):
        r.read_frame(deadline=time.monotonic() + 0.5)
    assert 0.45 < time.monotonic() - t < 1.5


def test_deadline_met_returns_the_frame():
    r = FrameReader(DripPort(encode_frame(0x81, b"ok"), 0.001).read, timeout=1)
    assert r.read_frame(deadline=time.monotonic() + 5) == (0x81, b"ok")


def test_deadline_before_timeout_bounds_the_wait():
    r = FrameReader(FakePort(b"").read, timeout=30)
    t = time.monotonic()
    with pytest.raises(BoardTimeout, match="no answer"):
        r.read_frame(deadline=time.monotonic() + 0.2)
    assert time.monotonic() - t < 1.0


def test_noise_without_sync_is_reported():
    r = FrameReader(FakePort(bytes(range(0x10, 0x60)) * 3).read, timeout=0.3)
    with pytest.raises(BoardTimeout, match="no valid frame .*240 bytes of noise"):
        r.read_frame()
    assert r.stray == 240


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0, -1, "1", None, True])
def test_timeouts_must_be_finite_and_positive(value):
    with pytest.raises(ValueError, match="finite number of seconds > 0"):
        FrameReader(FakePort(b"").read, timeout=value)
    with pytest.raises(ValueError, match="byte_timeout"):
        FrameReader(FakePort(b"").read, byte_timeout=value)
    if value is not None:
        with pytest.raises(ValueError):
            FrameReader(FakePort(b"").read).read_frame(timeout=value)
    assert check_seconds("t", 0.25) == 0.25


@pytest.mark.parametrize("ftype, payload, exc", [(1.5, b"", TypeError), (True, b"", TypeError),
                                                 (-1, b"", ValueError), (256, b"", ValueError),
                                                 (1, "text", TypeError), (1, [1, 2], TypeError)])
def test_encode_frame_checks_arguments(ftype, payload, exc):
    with pytest.raises(exc):
        encode_frame(ftype, payload)
    assert encode_frame(FrameType.PING, bytearray(b"a")) == encode_frame(1, b"a")
