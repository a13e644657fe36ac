# SPDX-License-Identifier: Apache-2.0
"""The compressed ``.kep`` model file: a validated safetensors container (no pickle).

The format is specified in ``docs/kep-format.md``. In short: a safetensors file whose
``__metadata__`` holds ``format = "kep"``, ``format_version = "1"``, ``graph`` (JSON list of
layers in execution order) and ``meta`` (JSON dict); its tensors are named ``<layer>.<field>``.

:func:`load_kep` parses the 8-byte header length and the JSON header itself before the
bytes are handed to safetensors, then checks every tensor against the graph. Any defect
raises :class:`KepFormatError` with one line; nothing in a file is ever executed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

from kep_common.errors import KepError
from kep_common.fileio import atomic_write_bytes
from kep_train.golden.intarith import check_requant_params

__all__ = ["KEP_FORMAT", "KEP_FORMAT_VERSION", "MAX_HEADER_BYTES", "MAX_FILE_BYTES", "OPS",
           "MAX_CHANNELS", "MAX_SPATIAL", "MAX_ACTIVATION", "KepFormatError", "KepLayer",
           "KepModel", "save_kep", "load_kep", "dumps_kep", "loads_kep"]

KEP_FORMAT = "kep"
KEP_FORMAT_VERSION = "1"
MAX_HEADER_BYTES = 8 * 2**20        # JSON header limit (a ResNet-110 header is ~100 KB)
MAX_FILE_BYTES = 2**31              # whole-file limit
OPS = ("conv", "maxpool", "avgpool", "linear")
MAX_KERNEL = 16                     # k*k <= 256 keeps an index in one uint8
MAX_DIM = 2**20                     # bound on any tensor dimension in the container
MAX_CHANNELS = 2**16                # bound on a layer's channels (and classes)
MAX_SPATIAL = 4096                  # bound on an activation's height and width
MAX_ACTIVATION = 2**24              # bound on C*H*W of one image's activation (16 Mi elements)

# safetensors dtype name -> (torch dtype, bytes per element)
_DTYPES = {"I8": (torch.int8, 1), "U8": (torch.uint8, 1), "I32": (torch.int32, 4),
           "F32": (torch.float32, 4)}
_DTYPE_NAMES = {v[0]: k for k, v in _DTYPES.items()}


class KepFormatError(KepError):
    """A ``.kep`` file is malformed, truncated, hostile or of an unsupported version."""


@dataclass
class KepLayer:
    """One layer of a :class:`KepModel` (see ``docs/kep-format.md`` for every field).

    ``op`` is ``"conv"``, ``"maxpool"``, ``"avgpool"`` (global sum into int32) or
    ``"linear"`` (int8 weight, int32 bias, int32 output). Conv layers hold either
    ``values``/``index`` (sparse, ``[Cout, Cin, K]``) or ``weight`` (dense,
    ``[Cout, Cin, k, k]``), plus ``bias``, ``mult``, ``shift``, ``res_mult`` (int32 ``[Cout]``)
    and ``w_scale`` (float32 ``[Cout]``). Shapes are ``(C, H, W)`` (``(C,)`` after avgpool).
    """

    name: str
    op: str
    input: str
    in_shape: tuple = ()
    out_shape: tuple = ()
    in_scale: float = 1.0
    out_scale: float = 1.0
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    relu: bool = False
    residual: str | None = None
    sparse: bool = False
    values: torch.Tensor | None = None
    index: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    mult: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    res_mult: torch.Tensor | None = None
    w_scale: torch.Tensor | None = None

    @property
    def K(self) -> int:
        """Kept elements per kernel plane (``k*k`` for a dense conv, 0 for other ops)."""
        if self.op != "conv":
            return 0
        if self.sparse:
            return int(self.values.shape[2])
        return self.kernel_size * self.kernel_size

    def planes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values int8 [Cout, Cin, K], index uint8 [Cout, Cin, K])`` of a conv layer.

        A dense layer gives all ``k*k`` elements of every plane (index ``0 .. k*k-1``), so
        every conv layer can run on the sparse engine.

        Raises
        ------
        ValueError
            If the layer is not a conv layer.
        """
        if self.op != "conv":
            raise ValueError(f"layer {self.name!r} is {self.op!r}, not conv")
        if self.sparse:
            return self.values, self.index
        cout, cin, k, _ = self.weight.shape
        values = self.weight.reshape(cout, cin, k * k).contiguous()
        index = torch.arange(k * k, dtype=torch.uint8).expand(cout, cin, k * k).contiguous()
        return values, index

    def dense_weight(self) -> torch.Tensor:
        """int8 ``[Cout, Cin, k, k]`` weight of a conv layer (sparse planes scattered)."""
        if self.op != "conv":
            raise ValueError(f"layer {self.name!r} is {self.op!r}, not conv")
        if not self.sparse:
            return self.weight
        from kep_train.golden.sparseconv import expand_dense
        return expand_dense(self.values, self.index, self.kernel_size)


@dataclass
class KepModel:
    """A quantized network: layers in execution order and a metadata dict.

    ``meta`` holds at least ``model_name``, ``dataset``, ``num_classes``, ``input_shape``
    (C, H, W), ``input_scale``, ``mean``/``std`` and ``kep`` (pruning settings).
    """

    layers: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def layer(self, name: str) -> KepLayer:
        """The layer called ``name`` (``KeyError`` if none)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def conv_layers(self) -> list:
        """The conv layers, in execution order."""
        return [layer for layer in self.layers if layer.op == "conv"]

    @property
    def input_scale(self) -> float:
        """Scale of the int8 network input (float = scale * int8)."""
        return float(self.meta["input_scale"])


# --------------------------------------------------------------------------------------------
# writing

def _layer_json(layer: KepLayer) -> dict:
    d = {"name": layer.name, "op": layer.op, "input": layer.input,
         "in_shape": list(layer.in_shape), "out_shape": list(layer.out_shape),
         "in_scale": float(layer.in_scale), "out_scale": float(layer.out_scale)}
    if layer.op == "conv":
        d.update(kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                 relu=bool(layer.relu), residual=layer.residual, sparse=bool(layer.sparse),
                 K=layer.K)
    elif layer.op == "maxpool":
        d.update(kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding)
    return d


def _layer_tensors(layer: KepLayer) -> dict:
    if layer.op == "conv":
        names = (["values", "index"] if layer.sparse else ["weight"]) + [
            "bias", "mult", "shift", "res_mult", "w_scale"]
    elif layer.op == "linear":
        names = ["weight", "bias"]
    else:
        names = []
    out = {}
    for n in names:
        t = getattr(layer, n)
        if not isinstance(t, torch.Tensor):
            raise KepFormatError(f"layer {layer.name!r} has no tensor {n!r}")
        out[f"{layer.name}.{n}"] = t.detach().cpu().contiguous()
    return out


def dumps_kep(model: KepModel) -> bytes:
    """Serialize ``model`` to ``.kep`` bytes (validated by parsing them back).

    Raises
    ------
    KepFormatError
        If the model is inconsistent (the message names the first defect).
    """
    from safetensors.torch import save
    tensors = {}
    for layer in model.layers:
        for k, t in _layer_tensors(layer).items():
            if k in tensors:
                raise KepFormatError(f"duplicate tensor name {k!r}")
            tensors[k] = t
    try:
        graph = json.dumps([_layer_json(layer) for layer in model.layers], allow_nan=True)
        meta = json.dumps(model.meta, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise KepFormatError(f"model metadata is not JSON-serializable: {e}")
    metadata = {"format": KEP_FORMAT, "format_version": KEP_FORMAT_VERSION,
                "graph": graph, "meta": meta}
    data = save(tensors, metadata=metadata)
    loads_kep(data)  # never write a file that the reader would reject
    return data


def save_kep(path: str | os.PathLike, model: KepModel) -> None:
    """Write ``model`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (conventionally ``*.kep``).
    model : KepModel
        The model; it is validated exactly as :func:`load_kep` validates a file.

    Raises
    ------
    KepFormatError
        If the model is inconsistent.
    """
    atomic_write_bytes(path, dumps_kep(model))


# --------------------------------------------------------------------------------------------
# reading

def load_kep(path: str | os.PathLike) -> KepModel:
    """Read and validate a ``.kep`` file.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    KepModel

    Raises
    ------
    KepFormatError
        Missing, truncated, oversized, corrupt or inconsistent file, unknown version or
        layer kind; the message is one line naming the defect.
    """
    if not os.path.exists(path):
        raise KepFormatError(f"model file {str(path)!r} does not exist")
    if not os.path.isfile(path):
        raise KepFormatError(f"model file {str(path)!r} is not a regular file")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise KepFormatError(f"{str(path)!r}: file of {size} bytes exceeds the "
                             f"{MAX_FILE_BYTES}-byte limit")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return loads_kep(data)
    except KepFormatError as e:
        raise KepFormatError(f"{str(path)!r}: {e}") from None


def _fail(msg: str):
    raise KepFormatError(msg)


def _parse_header(data: bytes) -> tuple[dict, dict, int]:
    """Return (tensor entries, string metadata, start of the data buffer)."""
    if len(data) < 8:
        _fail(f"truncated file: {len(data)} bytes, the 8-byte header length is missing")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES:
        _fail(f"header too large: {n} bytes (limit {MAX_HEADER_BYTES})")
    if 8 + n > len(data):
        _fail(f"truncated file: header of {n} bytes but only {len(data) - 8} bytes follow")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        _fail(f"header is not valid JSON ({type(e).__name__})")
    if not isinstance(header, dict):
        _fail("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        _fail("header lacks a string-to-string __metadata__ object")
    buf_len = len(data) - 8 - n
    spans = []
    for name, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            _fail(f"tensor {name!r}: header entry must have exactly dtype, shape, data_offsets")
        if e["dtype"] not in _DTYPES:
            _fail(f"tensor {name!r}: unsupported dtype {e['dtype']!r}")
        shape, offs = e["shape"], e["data_offsets"]
        if (not isinstance(shape, list) or len(shape) > 4
                or not all(type(s) is int and 0 <= s <= MAX_DIM for s in shape)):
            _fail(f"tensor {name!r}: bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(type(o) is int and o >= 0 for o in offs) or offs[0] > offs[1]):
            _fail(f"tensor {name!r}: bad data_offsets {offs!r}")
        numel = math.prod(shape)
        if offs[1] - offs[0] != numel * _DTYPES[e["dtype"]][1]:
            _fail(f"tensor {name!r}: data_offsets {offs} do not match shape {shape} "
                  f"and dtype {e['dtype']}")
        if offs[1] > buf_len:
            _fail(f"truncated file: tensor {name!r} ends at byte {offs[1]} of a "
                  f"{buf_len}-byte data buffer")
        spans.append((offs[0], offs[1], name))
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            _fail(f"tensor {name!r}: data overlaps or leaves a gap at byte {pos}")
        pos = e
    if pos != buf_len:
        _fail(f"{buf_len - pos} unexpected bytes after the last tensor")
    return header, metadata, 8 + n


def loads_kep(data: bytes) -> KepModel:
    """Parse and validate ``.kep`` bytes (see :func:`load_kep`)."""
    _, metadata, _ = _parse_header(data)
    fmt = metadata.get("format")
    if fmt != KEP_FORMAT:
        _fail(f"not a .kep file (metadata format is {fmt!r}, expected {KEP_FORMAT!r})")
    ver = metadata.get("format_version")
    if ver is None:
        _fail("missing format_version in the metadata")
    if ver != KEP_FORMAT_VERSION:
        _fail(f"unsupported format version {ver!r} (this reader reads {KEP_FORMAT_VERSION!r})")
    for key in ("graph", "meta"):
        if key not in metadata:
            _fail(f"metadata lacks {key!r}")
    try:
        graph = json.loads(metadata["graph"])
        meta = json.loads(metadata["meta"])
    except (ValueError, RecursionError) as e:
        _fail(f"graph or meta metadata is not valid JSON ({type(e).__name__})")
    if not isinstance(graph, list) or not graph:
        _fail("graph must be a non-empty JSON list of layers")
    if not isinstance(meta, dict):
        _fail("meta must be a JSON object")
    from safetensors import SafetensorError
    from safetensors.torch import load
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        _fail(f"safetensors rejected the file ({str(e).splitlines()[0] if str(e) else e!r})")
    return _build_model(graph, meta, tensors)


# --------------------------------------------------------------------------------------------
# validation of the graph against the tensors

def _get(d: dict, key: str, where: str):
    if key not in d:
        _fail(f"{where}: missing {key!r}")
    return d[key]


def _int(d, key, where, lo, hi) -> int:
    v = _get(d, key, where)
    if type(v) is not int or not lo <= v <= hi:
        _fail(f"{where}: {key} must be an integer in [{lo}, {hi}], got {_short(v)}")
    return v


def _bool(d, key, where) -> bool:
    v = _get(d, key, where)
    if type(v) is not bool:
        _fail(f"{where}: {key} must be true or false, got {_short(v)}")
    return v


def _scale(v, what: str) -> float:
    if type(v) not in (int, float) or not math.isfinite(v) or v <= 0:
        _fail(f"{what} must be a finite positive number, got {_short(v)}")
    return float(v)


def _shape(d, key, where, ndim) -> tuple:
    """An activation shape: ``[C]`` or ``[C, H, W]`` within the size bounds of the format."""
    v = _get(d, key, where)
    if (not isinstance(v, list) or len(v) != ndim
            or not all(type(s) is int and 1 <= s <= MAX_DIM for s in v)):
        _fail(f"{where}: {key} must be {ndim} positive integers, got {_short(v)}")
    if v[0] > MAX_CHANNELS:
        _fail(f"{where}: {key} {v!r} has more than {MAX_CHANNELS} channels")
    if ndim == 3 and (max(v[1:]) > MAX_SPATIAL or math.prod(v) > MAX_ACTIVATION):
        _fail(f"{where}: {key} {v!r} exceeds the size limits (H, W <= {MAX_SPATIAL}, "
              f"C*H*W <= {MAX_ACTIVATION})")
    return tuple(v)


def _numbers(meta, key, n, *, positive) -> list:
    """``meta[key]``: a list of ``n`` finite numbers (> 0 when ``positive``)."""
    v = _get(meta, key, "meta")
    if (not isinstance(v, list) or len(v) != n
            or not all(type(x) in (int, float) and math.isfinite(x) and (x > 0 or not positive)
                       for x in v)):
        what = "finite positive numbers" if positive else "finite numbers"
        _fail(f"meta: {key} must be a list of {n} {what} (one per input channel), got "
              f"{_short(v)}")
    return [float(x) for x in v]


def _short(v, limit: int = 60) -> str:
    r = " ".join(repr(v).split())
    return r if len(r) <= limit else r[:limit] + "..."


#: optional meta keys and the JSON types they may hold (None = JSON null)
_META_TYPES = {"model_name": (str, type(None)), "dataset": (str, type(None)),
               "checkpoint": (str, type(None)), "toolkit_version": (str, type(None)),
               "format_version": (str,), "kep": (dict, type(None)),
               "calibration": (dict, type(None))}


def _check_meta(meta: dict) -> tuple:
    """Validate ``meta`` (section 4 of docs/kep-format.md); returns the input shape."""
    input_shape = _shape(meta, "input_shape", "meta", 3)
    _scale(_get(meta, "input_scale", "meta"), "meta input_scale")
    _numbers(meta, "mean", input_shape[0], positive=False)
    _numbers(meta, "std", input_shape[0], positive=True)
    for key, types in _META_TYPES.items():
        if key in meta and type(meta[key]) not in types:
            _fail(f"meta: {key} has the wrong type ({_short(meta[key])})")
    n = meta.get("num_classes")
    if n is not None and (type(n) is not int or not 1 <= n <= MAX_CHANNELS):
        _fail(f"meta: num_classes must be an integer in [1, {MAX_CHANNELS}] or null, got "
              f"{_short(n)}")
    top1 = meta.get("float_top1")
    if top1 is not None and (type(top1) not in (int, float) or not 0 <= top1 <= 100):
        _fail(f"meta: float_top1 must be a number in [0, 100] or null, got {_short(top1)}")
    return input_shape


def _same_scale(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b))


def _tensor(tensors, used, name, field_, dtype, shape):
    key = f"{name}.{field_}"
    if key not in tensors:
        _fail(f"layer {name!r}: tensor {key!r} is missing")
    t = tensors[key]
    used.add(key)
    if t.dtype != dtype:
        _fail(f"layer {name!r}: tensor {key!r} has dtype {_DTYPE_NAMES.get(t.dtype, t.dtype)}, "
              f"expected {_DTYPE_NAMES[dtype]}")
    if tuple(t.shape) != tuple(shape):
        _fail(f"layer {name!r}: tensor {key!r} has shape {list(t.shape)}, graph says "
              f"{list(shape)}")
    return t


def _build_model(graph: list, meta: dict, tensors: dict) -> KepModel:
    input_shape = _check_meta(meta)
    input_scale = float(meta["input_scale"])
    produced = {"input": (input_shape, input_scale, "input")}   # name -> (shape, scale, op)
    layers, used = [], set()
    for pos, d in enumerate(graph):
        if not isinstance(d, dict):
            _fail(f"graph entry {pos} is not a JSON object")
        name = d.get("name")
        if not isinstance(name, str) or not name or name == "input":
            _fail(f"graph entry {pos}: bad layer name {_short(name)}")
        where = f"layer {_short(name)}"
        if name in produced:
            _fail(f"{where}: duplicate layer name")
        op = _get(d, "op", where)
        if op not in OPS:
            _fail(f"{where}: unknown layer kind {_short(op)} (known: {', '.join(OPS)})")
        src = _get(d, "input", where)
        if not isinstance(src, str) or src not in produced:
            _fail(f"{where}: input {_short(src)} is not an earlier layer or 'input'")
        src_shape, src_scale, src_op = produced[src]
        in_scale = _scale(_get(d, "in_scale", where), f"{where}: in_scale")
        out_scale = _scale(_get(d, "out_scale", where), f"{where}: out_scale")
        if not _same_scale(in_scale, src_scale):
            _fail(f"{where}: in_scale {in_scale!r} differs from the out_scale {src_scale!r} "
                  f"of its input {src!r}")
        spatial = op in ("conv", "maxpool", "avgpool")
        in_shape = _shape(d, "in_shape", where, 3 if spatial else 1)
        if in_shape != tuple(src_shape):
            _fail(f"{where}: in_shape {list(in_shape)} does not match the shape "
                  f"{list(src_shape)} of its input {src!r}")
        layer = KepLayer(name=name, op=op, input=src, in_shape=in_shape,
                         in_scale=in_scale, out_scale=out_scale)
        if op in ("conv", "maxpool"):
            k = _int(d, "kernel_size", where, 1, MAX_KERNEL)
            s = _int(d, "stride", where, 1, MAX_KERNEL)
            p = _int(d, "padding", where, 0, k - 1 if op == "conv" else k // 2)
            c, h, w = in_shape
            ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            if ho < 1 or wo < 1:
                _fail(f"{where}: kernel {k} does not fit the input {list(in_shape)}")
            layer.kernel_size, layer.stride, layer.padding = k, s, p
            out_shape = _shape(d, "out_shape", where, 3)
            if op == "maxpool":
                expect = (c, ho, wo)
                if not _same_scale(out_scale, in_scale):
                    _fail(f"{where}: a maxpool keeps the scale (in_scale != out_scale)")
            else:
                expect = (out_shape[0], ho, wo)
            if out_shape != expect:
                _fail(f"{where}: out_shape {list(out_shape)} does not match the computed "
                      f"{list(expect)}")
            layer.out_shape = out_shape
        elif op == "avgpool":
            layer.out_shape = _shape(d, "out_shape", where, 1)
            if layer.out_shape != (in_shape[0],):
                _fail(f"{where}: out_shape {list(layer.out_shape)} must be [{in_shape[0]}]")
            if not _same_scale(out_scale * in_shape[1] * in_shape[2], in_scale):
                _fail(f"{where}: out_scale must be in_scale / (H*W)")
        else:  # linear
            if src_op != "avgpool":
                _fail(f"{where}: a linear layer must read the output of an avgpool layer")
            layer.out_shape = _shape(d, "out_shape", where, 1)
        if op == "conv":
            _conv_fields(d, layer, tensors, used, produced, where)
        elif op == "linear":
            cout, cin = layer.out_shape[0], in_shape[0]
            layer.weight = _tensor(tensors, used, name, "weight", torch.int8, (cout, cin))
            layer.bias = _tensor(tensors, used, name, "bias", torch.int32, (cout,))
        if src_op in ("avgpool", "linear") and op != "linear":
            _fail(f"{where}: cannot read the int32 output of {src!r}")
        layers.append(layer)
        produced[name] = (layer.out_shape, out_scale, op)
    extra = sorted(set(tensors) - used)
    if extra:
        _fail(f"tensor {extra[0]!r} belongs to no layer of the graph")
    return KepModel(layers=layers, meta=meta)


def _conv_fields(d, layer, tensors, used, produced, where):
    name, k = layer.name, layer.kernel_size
    cout, cin = layer.out_shape[0], layer.in_shape[0]
    layer.relu = _bool(d, "relu", where)
    layer.sparse = _bool(d, "sparse", where)
    res = _get(d, "residual", where)
    if res is not None:
        if not isinstance(res, str) or res not in produced:
            _fail(f"{where}: residual {_short(res)} is not an earlier layer")
        r_shape, _, r_op = produced[res]
        if r_op not in ("input", "conv", "maxpool") or tuple(r_shape) != layer.out_shape:
            _fail(f"{where}: residual {res!r} has shape {list(r_shape)}, expected "
                  f"{list(layer.out_shape)}")
    layer.residual = res
    kk = k * k
    big_k = _int(d, "K", where, 1, kk)
    if layer.sparse:
        layer.values = _tensor(tensors, used, name, "values", torch.int8, (cout, cin, big_k))
        layer.index = _tensor(tensors, used, name, "index", torch.uint8, (cout, cin, big_k))
        idx = layer.index.to(torch.int64)
        if idx.numel() and int(idx.max()) >= kk:
            _fail(f"{where}: index {int(idx.max())} >= k*k = {kk}")
        if big_k > 1:
            diff = idx[..., 1:] - idx[..., :-1]
            if bool((diff == 0).any()):
                _fail(f"{where}: duplicate index within a kernel plane")
            if bool((diff < 0).any()):
                _fail(f"{where}: indices not ascending within a kernel plane")
    else:
        if big_k != kk:
            _fail(f"{where}: a dense layer has K = k*k = {kk}, got {big_k}")
        layer.weight = _tensor(tensors, used, name, "weight", torch.int8, (cout, cin, k, k))
    layer.bias = _tensor(tensors, used, name, "bias", torch.int32, (cout,))
    layer.mult = _tensor(tensors, used, name, "mult", torch.int32, (cout,))
    layer.shift = _tensor(tensors, used, name, "shift", torch.int32, (cout,))
    layer.res_mult = _tensor(tensors, used, name, "res_mult", torch.int32, (cout,))
    layer.w_scale = _tensor(tensors, used, name, "w_scale", torch.float32, (cout,))
    try:
        check_requant_params(layer.mult, layer.shift, layer.res_mult)
    except ValueError as e:
        _fail(f"{where}: {e}")
    if res is None and bool((layer.res_mult != 0).any()):
        _fail(f"{where}: res_mult must be 0 in a layer without residual")
    ws = layer.w_scale
    if ws.numel() and not bool((torch.isfinite(ws) & (ws > 0)).all()):
        _fail(f"{where}: w_scale must be finite and positive (found NaN, inf or <= 0)")
