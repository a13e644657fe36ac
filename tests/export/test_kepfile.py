# SPDX-License-Identifier: Apache-2.0
"""The .kep container: round trip, every malformed-file class, fuzzing of mutated files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from kep_common.errors import KepError
from kep_train.export.kepfile import (MAX_HEADER_BYTES, KepFormatError, dumps_kep, load_kep,
                                      loads_kep, save_kep)
from kep_train.models import VGG
from kep_train.testing import random_kep

FIELDS = ("values", "index", "weight", "bias", "mult", "shift", "res_mult", "w_scale")


@pytest.fixture(scope="module")
def tiny():
    """A small VGG-like .kep: sparse and dense convs, maxpool, avgpool, linear."""
    return random_kep(VGG([4, "M", 6, 6]), K=3, seed=1, n_calib=4, input_shape=(3, 8, 8))


@pytest.fixture(scope="module")
def resnet():
    return random_kep(_small_resnet(), K=4, seed=2, n_calib=4, input_shape=(3, 8, 8))


def _small_resnet():
    from kep_train.models import CifarResNet
    return CifarResNet(8)


def _parts(model):
    """(tensors, metadata with graph/meta as Python objects) of a valid model."""
    data = dumps_kep(model)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    md = header["__metadata__"]
    from safetensors.torch import load
    return load(data), {"format": md["format"], "format_version": md["format_version"],
                        "graph": json.loads(md["graph"]), "meta": json.loads(md["meta"])}


def _build(tensors, md) -> bytes:
    md = dict(md)
    for k in ("graph", "meta"):
        if not isinstance(md.get(k), str) and k in md:
            md[k] = json.dumps(md[k])
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=md)


def _reject(data: bytes, match: str, tmp_path):
    p = tmp_path / "bad.kep"
    p.write_bytes(data)
    with pytest.raises(KepFormatError, match=match) as e:
        load_kep(p)
    assert "\n" not in str(e.value)


def test_round_trip_identical(tiny, resnet, tmp_path):
    for model in (tiny, resnet):
        p = tmp_path / "m.kep"
        save_kep(p, model)
        back = load_kep(p)
        assert back.meta == json.loads(json.dumps(model.meta))
        assert [ly.name for ly in back.layers] == [ly.name for ly in model.layers]
        for a, b in zip(model.layers, back.layers):
            for f in ("op", "input", "in_shape", "out_shape", "in_scale", "out_scale",
                      "kernel_size", "stride", "padding", "relu", "residual", "sparse"):
                assert getattr(a, f) == getattr(b, f), (a.name, f)
            for f in FIELDS:
                ta, tb = getattr(a, f), getattr(b, f)
                assert (ta is None) == (tb is None), (a.name, f)
                if ta is not None:
                    assert ta.dtype == tb.dtype and torch.equal(ta, tb), (a.name, f)


def test_structure_of_tiny(tiny, resnet):
    ops = [ly.op for ly in tiny.layers]
    assert ops == ["conv", "maxpool", "conv", "conv", "avgpool", "linear"]
    sparse = [ly for ly in tiny.conv_layers if ly.sparse]
    assert sparse and all(ly.K == 3 and ly.values.shape[2] == 3 for ly in sparse)
    assert any(ly.residual for ly in resnet.conv_layers)
    for ly in resnet.conv_layers:
        v, i = ly.planes()
        assert v.dtype == torch.int8 and i.dtype == torch.uint8 and v.shape[2] == ly.K
        if not ly.sparse:
            assert torch.equal(v.view(ly.weight.shape), ly.weight)
            assert torch.equal(i[0, 0], torch.arange(ly.K, dtype=torch.uint8))


def test_save_is_atomic_and_validates(tiny, tmp_path):
    p = tmp_path / "m.kep"
    save_kep(p, tiny)
    before = p.read_bytes()
    broken = type(tiny)(layers=list(tiny.layers), meta=dict(tiny.meta, input_scale=float("nan")))
    with pytest.raises(KepFormatError, match="input_scale"):
        save_kep(p, broken)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m.kep"]


def _sparse_name(model):
    return next(ly.name for ly in model.conv_layers if ly.sparse)


def test_truncated(tiny, tmp_path):
    data = dumps_kep(tiny)
    n = int.from_bytes(data[:8], "little")
    _reject(data[:5], "truncated file: 5 bytes", tmp_path)
    _reject(data[:8 + n // 2], "truncated file: header of", tmp_path)
    _reject(data[:-1], "truncated file: tensor", tmp_path)
    _reject(data[:8 + n + 3], "truncated file: tensor", tmp_path)
    _reject(data + b"\0", "unexpected bytes after the last tensor", tmp_path)


def test_header_too_large(tiny, tmp_path):
    data = dumps_kep(tiny)
    _reject((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + data[8:], "header too large",
            tmp_path)
    _reject((2**64 - 1).to_bytes(8, "little") + data[8:], "header too large", tmp_path)


def test_not_json_header(tiny, tmp_path):
    data = dumps_kep(tiny)
    _reject(data[:8] + b"\xff" + data[9:], "header is not valid JSON", tmp_path)


def test_version(tiny, tmp_path):
    t, md = _parts(tiny)
    _reject(_build(t, dict(md, format_version="2")), "unsupported format version '2'", tmp_path)
    no_ver = {k: v for k, v in md.items() if k != "format_version"}
    _reject(_build(t, no_ver), "missing format_version", tmp_path)
    _reject(_build(t, dict(md, format="onnx")), "not a .kep file", tmp_path)
    _reject(save(t), "__metadata__", tmp_path)


def test_index_out_of_range(tiny, tmp_path):
    t, md = _parts(tiny)
    name = _sparse_name(tiny)
    idx = t[f"{name}.index"].clone()
    idx[0, 0, -1] = 9
    _reject(_build(dict(t, **{f"{name}.index": idx}), md), "index 9 >= k\\*k = 9", tmp_path)


def test_duplicate_and_unsorted_indices(tiny, tmp_path):
    t, md = _parts(tiny)
    name = _sparse_name(tiny)
    idx = t[f"{name}.index"].clone()
    dup = idx.clone()
    dup[1, 0, 1] = dup[1, 0, 0]
    _reject(_build(dict(t, **{f"{name}.index": dup}), md), "duplicate index", tmp_path)
    uns = idx.clone()
    uns[0, 1] = uns[0, 1].flip(0)
    _reject(_build(dict(t, **{f"{name}.index": uns}), md), "not ascending", tmp_path)


def test_shape_mismatch(tiny, tmp_path):
    t, md = _parts(tiny)
    name = _sparse_name(tiny)
    v = t[f"{name}.values"]
    _reject(_build(dict(t, **{f"{name}.values": v[:, :, :2].contiguous()}), md),
            "has shape .* graph says", tmp_path)
    g = json.loads(json.dumps(md["graph"]))
    g[0]["out_shape"][0] += 1
    _reject(_build(t, dict(md, graph=g)), "graph says", tmp_path)
    g = json.loads(json.dumps(md["graph"]))
    g[1]["in_shape"][1] += 2
    _reject(_build(t, dict(md, graph=g)), "does not match the shape", tmp_path)
    dense = next(ly.name for ly in tiny.conv_layers if not ly.sparse)
    _reject(_build(dict(t, **{f"{dense}.bias": t[f"{dense}.bias"].to(torch.int8)}), md),
            "has dtype I8, expected I32", tmp_path)
    extra = dict(t, **{"stray.tensor": torch.zeros(2, dtype=torch.int8)})
    _reject(_build(extra, md), "belongs to no layer", tmp_path)
    missing = {k: v for k, v in t.items() if k != f"{dense}.mult"}
    _reject(_build(missing, md), f"tensor '{dense}.mult' is missing", tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0])
def test_bad_scales(tiny, tmp_path, bad):
    t, md = _parts(tiny)
    g = json.loads(json.dumps(md["graph"]))
    g[2]["out_scale"] = bad
    _reject(_build(t, dict(md, graph=g)), "out_scale must be a finite positive", tmp_path)
    _reject(_build(t, dict(md, meta=dict(md["meta"], input_scale=bad))),
            "input_scale must be a finite positive", tmp_path)
    name = tiny.conv_layers[0].name
    ws = t[f"{name}.w_scale"].clone()
    ws[0] = bad
    _reject(_build(dict(t, **{f"{name}.w_scale": ws}), md), "w_scale must be finite", tmp_path)


def test_unknown_layer_kind_and_bad_fields(tiny, tmp_path):
    t, md = _parts(tiny)

    def with_layer(i, **kw):
        g = json.loads(json.dumps(md["graph"]))
        g[i].update(kw)
        return _build(t, dict(md, graph=g))

    _reject(with_layer(1, op="lstm"), "unknown layer kind 'lstm'", tmp_path)
    _reject(with_layer(1, input="nowhere"), "is not an earlier layer", tmp_path)
    _reject(with_layer(0, relu="yes"), "relu must be true or false", tmp_path)
    _reject(with_layer(0, stride=0), "stride must be an integer", tmp_path)
    _reject(with_layer(2, residual="classifier"), "residual 'classifier' is not an earlier",
            tmp_path)
    _reject(with_layer(2, name=tiny.layers[0].name), "duplicate layer name", tmp_path)
    mult = t[f"{tiny.layers[0].name}.mult"].clone()
    mult[0] = 2**16
    _reject(_build(dict(t, **{f"{tiny.layers[0].name}.mult": mult}), md), "mult must lie",
            tmp_path)


def test_cli_inspect_rejects_with_one_line(tiny, tmp_path, capsys):
    from kep_train.export.cli import inspect_main
    p = tmp_path / "bad.kep"
    p.write_bytes(dumps_kep(tiny)[:100])
    with pytest.raises(SystemExit) as e:
        inspect_main([str(p)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "truncated" in err and "\n" not in err


def test_missing_file(tmp_path):
    with pytest.raises(KepFormatError, match="does not exist"):
        load_kep(tmp_path / "none.kep")


# ---------------------------------------------------------------------------- fuzzing

def _check_loads_or_rejects(data: bytes):
    try:
        model = loads_kep(data)
    except KepFormatError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert model.layers  # a mutation that stays valid must load completely


_fuzz = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@_fuzz
@given(st.data())
def test_fuzz_byte_mutations(tiny, data):
    raw = bytearray(dumps_kep(tiny))
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            raw[pos] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[pos:]
        elif kind == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[pos:pos + data.draw(st.integers(1, 8))]
        if not raw:
            break
    _check_loads_or_rejects(bytes(raw))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
    | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.text(max_size=6), c, max_size=3), max_leaves=6)


@_fuzz
@given(st.data())
def test_fuzz_graph_mutations(tiny, data):
    t, md = _parts(tiny)
    g = json.loads(json.dumps(md["graph"]))
    for _ in range(data.draw(st.integers(1, 3))):
        layer = data.draw(st.sampled_from(g))
        key = data.draw(st.sampled_from(sorted(layer) + ["extra"]))
        if data.draw(st.booleans()):
            layer[key] = data.draw(_json_values)
        else:
            layer.pop(key, None)
    _check_loads_or_rejects(_build(t, dict(md, graph=g)))


@_fuzz
@given(st.data())
def test_fuzz_tensor_mutations(tiny, data):
    t, md = _parts(tiny)
    key = data.draw(st.sampled_from(sorted(t)))
    x = t[key].clone()
    flat = x.view(-1)
    if flat.numel():
        i = data.draw(st.integers(0, flat.numel() - 1))
        if x.is_floating_point():
            flat[i] = data.draw(st.floats(width=32, allow_nan=True))
        else:
            info = torch.iinfo(x.dtype)
            flat[i] = data.draw(st.integers(info.min, info.max))
    if data.draw(st.booleans()):
        x = x.to(data.draw(st.sampled_from([torch.int8, torch.uint8, torch.int32,
                                            torch.float32])))
    _check_loads_or_rejects(_build(dict(t, **{key: x}), md))


def test_kep_format_error_is_kep_error():
    assert issubclass(KepFormatError, KepError)
    assert math.isfinite(MAX_HEADER_BYTES)
