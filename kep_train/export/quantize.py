# SPDX-License-Identifier: Apache-2.0
"""Post-training int8 quantization of a (KEP-pruned) float model into a :class:`KepModel`.

Steps (``docs/kep-format.md`` "How a float model becomes a .kep"):

1. **Graph extraction** with ``torch.fx.symbolic_trace``; patterns ``conv[->bn][->relu]``,
   ``conv[->bn] + tensor [->relu]`` (residual add fused into the conv), ``maxpool``,
   ``adaptive avgpool(1) [-> flatten]``, final ``linear``. Anything else raises
   :class:`~kep_common.errors.KepError` in one line naming the layer (module path) and its
   module type, or the function and the layer whose forward calls it.
2. **BN folding** into the conv weight and bias.
3. **Calibration** of one activation scale per layer output on float training images:
   ``scale = a / 127`` with ``a`` the mean over calibration batches of the ``percentile``-th
   percentile of ``|x|`` (method ``"percentile"``, default 99.99) or the maximum of ``|x|`` over
   all batches (method ``"max"``). The input scale is exact: the largest ``|x|`` that a
   normalized [0, 1] pixel can take, over 127.
4. **Weights** per output channel, symmetric: ``s_w = max|w| / 127``, ``q = round(w / s_w)``.
   Pruned elements (mask False) are exactly zero and are not stored; a kept element that
   rounds to 0 is still stored. **Bias** ``round(b / (s_in * s_w))`` in int32.
5. **Requantization** ``(mult, shift, res_mult)`` from
   :func:`kep_train.golden.intarith.quantize_multiplier`. The classifier uses one per-tensor
   weight scale and outputs int32 logits.
"""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from kep_common.errors import KepError
from kep_common.fileio import jsonable
from kep_train.golden.intarith import INT8_MAX, quantize_multiplier
from kep_train.export.kepfile import KEP_FORMAT_VERSION, KepLayer, KepModel, save_kep

__all__ = ["CALIB_METHODS", "extract_graph", "fold_bn", "calibrate", "quantize_model",
           "export_kep", "kep_from_checkpoint", "float_sparse_tensors", "input_scale"]

CALIB_METHODS = ("percentile", "max")
_RELU_FUNCS = (F.relu, torch.relu)
_ADD_FUNCS = (operator.add, torch.add)


@dataclass
class _Node:
    """A layer under construction while walking the fx graph."""

    name: str
    op: str
    input: str
    module: nn.Module | None = None
    bn: nn.Module | None = None
    relu: bool = False
    residual: str | None = None
    last: fx.Node | None = None     # the fx node whose value is this layer's float output
    stage: str = "final"            # conv -> bn -> add -> relu while fusing
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0


#: what the exporter turns into .kep layers (named in its errors)
_SUPPORTED = ("the .kep format holds Conv2d [-> BatchNorm2d] [+ residual add] [-> ReLU], "
              "MaxPool2d, AdaptiveAvgPool2d(1) [-> flatten] and one final Linear")


def _type_name(cls) -> str:
    return getattr(cls, "__name__", None) or str(cls)


def _describe(node: fx.Node, modules: dict) -> str:
    """Where an fx node comes from, for an error: ``layer 'features.3' (Conv2d)`` for a module
    call (its module path and type); ``torch.cat in layer 'blk.0' (Block)`` for a function or
    method call (the innermost module whose forward made it, else the model's forward)."""
    if node.op == "call_module":
        return f"layer {node.target!r} ({type(modules[node.target]).__name__})"
    if node.op == "placeholder":
        return f"the model's input {node.target!r}"
    if node.op == "output":
        return "the model's output"
    if node.op == "call_method":
        what = f"method .{node.target}()"
    else:
        t = node.target
        mod = getattr(t, "__module__", None) or ""
        mod = {"_operator": "operator", "torch._C._nn": "torch.nn.functional",
               "torch._C._VariableFunctions": "torch"}.get(mod, mod)
        name = getattr(t, "__name__", str(t))
        what = f"{mod}.{name}" if mod and not mod.startswith("builtins") else name
        if mod in ("", "torch") and callable(t) and hasattr(torch, name):
            what = f"torch.{name}"
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1][:2]
        return f"{what} in layer {path!r} ({_type_name(cls)})"
    return f"{what} in the model's forward"


def _pair(v, what, node, modules) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise KepError(f"cannot export {_describe(node, modules)}: non-square {what} "
                           f"{tuple(v)!r} (the .kep format has square {what}s)")
        v = v[0]
    return int(v)


class _Tracer(fx.Tracer):
    """``torch.fx`` tracer that remembers the module whose forward failed to trace."""

    def __init__(self):
        super().__init__()
        self.failed_in = None       # (module path, type name) of the innermost failure

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                try:
                    self.failed_in = (self.path_of_module(m), type(m).__name__)
                except Exception:   # a module that is not a registered submodule
                    self.failed_in = ("?", type(m).__name__)
            raise


def _trace(model: nn.Module) -> fx.GraphModule:
    """``fx.symbolic_trace`` with a one-line error naming the layer whose forward failed."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = (f" in layer {tracer.failed_in[0]!r} ({tracer.failed_in[1]})"
                 if tracer.failed_in and tracer.failed_in[0] else
                 f" in the forward of {type(model).__name__}")
        raise KepError(f"cannot trace the model with torch.fx{where}: {type(e).__name__}: "
                       f"{first}") from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def extract_graph(model: nn.Module) -> tuple[list, fx.GraphModule]:
    """Trace ``model`` and return the layer list (execution order) and the traced module.

    Raises
    ------
    KepError
        For any operation outside the supported patterns: one line naming the layer (module
        path) and its module type, or the function and the layer whose forward calls it.
    """
    gm = _trace(model)
    modules = dict(gm.named_modules())
    env: dict = {}          # fx node -> _Node (pending or final)
    order: list = []        # final layers in execution order
    names: set = {"input"}

    def bad(node, why=""):
        raise KepError(f"cannot export {_describe(node, modules)}: "
                       + (why or f"not supported ({_SUPPORTED})"))

    def finalize(node) -> str:
        if node not in env:
            bad(node, "its input is not a supported layer output")
        ly = env[node]
        if isinstance(ly, str):
            return ly
        if ly.stage != "final":
            ly.stage = "final"
            order.append(ly)
        return ly.name

    def unique(name):
        base, i = name, 1
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.add(name)
        return name

    def fusable(arg, stages):
        ly = env.get(arg)
        return (isinstance(ly, _Node) and ly.stage in stages and len(arg.users) == 1)

    for node in gm.graph.nodes:
        args = node.args
        if node.op == "placeholder":
            if any(isinstance(v, str) for v in env.values()):
                bad(node, "only one input is supported")
            env[node] = "input"
            continue
        if node.op == "output":
            out = args[0]
            if not isinstance(out, fx.Node):
                bad(node, "the model must return one tensor")
            finalize(out)
            if not order or env[out] is not order[-1]:
                bad(node, "the output must be the last layer")
            continue
        mod = modules.get(node.target) if node.op == "call_module" else None
        is_relu = (isinstance(mod, nn.ReLU) or (node.op == "call_function"
                   and node.target in _RELU_FUNCS) or (node.op == "call_method"
                                                       and node.target == "relu"))
        is_add = ((node.op == "call_function" and node.target in _ADD_FUNCS
                   and len(args) == 2 and not node.kwargs)
                  or (node.op == "call_method" and node.target == "add" and not node.kwargs))
        is_flatten = ((node.op == "call_function" and node.target is torch.flatten)
                      or (node.op == "call_method" and node.target == "flatten")
                      or isinstance(mod, nn.Flatten))
        if isinstance(mod, (nn.Identity, nn.Dropout)):
            env[node] = env.get(args[0]) if args[0] in env else bad(node)
        elif isinstance(mod, nn.Conv2d):
            if mod.groups != 1:
                bad(node, f"grouped convolution (groups {mod.groups}); the .kep format has "
                          "groups 1 only")
            if _pair(mod.dilation, "dilation", node, modules) != 1:
                bad(node, f"dilated convolution (dilation {mod.dilation}); the .kep format "
                          "has dilation 1 only")
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                bad(node, f"padding {mod.padding!r} mode {mod.padding_mode!r}; the .kep "
                          "format has explicit zero padding (an integer) only")
            src = finalize(args[0])
            ly = _Node(name=unique(node.target), op="conv", input=src, module=mod, last=node,
                       stage="conv", kernel_size=_pair(mod.kernel_size, "kernel", node, modules),
                       stride=_pair(mod.stride, "stride", node, modules),
                       padding=_pair(mod.padding, "padding", node, modules))
            env[node] = ly
        elif isinstance(mod, nn.BatchNorm2d):
            if not fusable(args[0], ("conv",)):
                bad(node, "batch norm must directly follow a conv with no other user")
            if mod.running_mean is None or mod.running_var is None:
                bad(node, "batch norm without running statistics (track_running_stats="
                          "False) cannot be folded into the conv")
            ly = env[args[0]]
            ly.bn, ly.stage, ly.last = mod, "bn", node
            env[node] = ly
        elif is_relu:
            if not fusable(args[0], ("conv", "bn", "add")):
                bad(node, "ReLU must follow a conv, conv-bn or residual add with no other user")
            ly = env[args[0]]
            ly.relu, ly.stage, ly.last = True, "relu", node
            env[node] = ly
            finalize(node)
        elif is_add:
            a, b = args[0], args[1]
            if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
                bad(node, "add of a constant")
            main, other = ((a, b) if fusable(a, ("conv", "bn")) else
                           (b, a) if fusable(b, ("conv", "bn")) else (None, None))
            if main is None:
                bad(node, "a residual add needs a conv or conv-bn operand with no other user")
            ly = env[main]
            ly.residual = finalize(other)
            ly.stage, ly.last = "add", node
            env[node] = ly
        elif isinstance(mod, nn.MaxPool2d):
            if _pair(mod.dilation, "dilation", node, modules) != 1 or mod.ceil_mode \
                    or mod.return_indices:
                bad(node, "dilated, ceil_mode or return_indices max pooling")
            src = finalize(args[0])
            k = _pair(mod.kernel_size, "kernel", node, modules)
            s = _pair(mod.stride if mod.stride is not None else k, "stride", node, modules)
            ly = _Node(name=unique(node.target), op="maxpool", input=src, last=node,
                       kernel_size=k, stride=s,
                       padding=_pair(mod.padding, "padding", node, modules))
            env[node] = ly
            order.append(ly)
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            if mod.output_size not in (1, (1, 1), [1, 1]):
                bad(node, "only global average pooling (output size 1)")
            src = finalize(args[0])
            ly = _Node(name=unique(node.target), op="avgpool", input=src, last=node)
            env[node] = ly
            order.append(ly)
        elif is_flatten:
            prev = env.get(args[0])
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 1)
            if isinstance(mod, nn.Flatten):
                start = mod.start_dim
            if not (isinstance(prev, _Node) and prev.op == "avgpool" and start == 1):
                bad(node, "flatten(x, 1) is supported only after global average pooling")
            env[node] = prev
        elif isinstance(mod, nn.Linear):
            prev = env.get(args[0])
            if not (isinstance(prev, _Node) and prev.op == "avgpool"):
                bad(node, "a linear layer must follow global average pooling")
            ly = _Node(name=unique(node.target), op="linear", input=prev.name, module=mod,
                       last=node)
            env[node] = ly
            order.append(ly)
        else:
            bad(node)
    for ly in order[:-1]:
        if ly.op == "linear":
            raise KepError(f"cannot export layer {ly.name!r} ({type(ly.module).__name__}): a "
                           "linear layer must be the last layer (the .kep format holds one "
                           "final classifier)")
    return order, gm


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode batch norm into the conv: returns float64 ``(weight, bias)``.

    ``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``; an
    exact zero weight stays exactly zero.
    """
    w = conv.weight.detach().to(torch.float64)
    b = (conv.bias.detach().to(torch.float64) if conv.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64))
    if bn is None:
        return w.clone(), b
    g = (bn.weight.detach().to(torch.float64) if bn.weight is not None
         else torch.ones_like(b))
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(b)
    if bn.running_mean is None or bn.running_var is None:
        raise KepError("batch norm without running statistics cannot be folded")
    f = g / torch.sqrt(bn.running_var.detach().to(torch.float64) + bn.eps)
    return w * f.view(-1, 1, 1, 1), (b - bn.running_mean.detach().to(torch.float64)) * f + beta


class _Recorder(fx.Interpreter):
    def __init__(self, gm, watch):
        super().__init__(gm)
        self.watch = watch      # fx node -> layer name
        self.values = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.watch:
            self.values[self.watch[n]] = out
        return out


def calibrate(gm: fx.GraphModule, layers: list, calib: torch.Tensor, *,
              method: str = "percentile", percentile: float = 99.99,
              batch_size: int = 256) -> tuple[dict, dict]:
    """Activation ranges of every layer output over ``calib`` (float, normalized images).

    Returns
    -------
    ranges : dict
        layer name -> calibrated ``|x|`` bound (the scale is ``bound / 127``).
    shapes : dict
        layer name -> output shape without the batch dimension.
    """
    if method not in CALIB_METHODS:
        raise KepError(f"unknown calibration method {method!r}; choose one of "
                       f"{', '.join(CALIB_METHODS)}")
    if not 0 < percentile <= 100:
        raise KepError(f"percentile must lie in (0, 100], got {percentile!r}")
    if calib.dim() != 4 or calib.shape[0] == 0 or not calib.is_floating_point():
        raise KepError(f"calibration images must be a float tensor [N, C, H, W], got "
                       f"{calib.dtype} {list(calib.shape)}")
    watch = {ly.last: ly.name for ly in layers}
    rec = _Recorder(gm, watch)
    stats: dict = {ly.name: [] for ly in layers}
    shapes: dict = {}
    with torch.inference_mode():
        for start in range(0, calib.shape[0], batch_size):
            rec.values = {}
            rec.run(calib[start:start + batch_size].float())
            for name, v in rec.values.items():
                shapes[name] = tuple(v.shape[1:])
                a = v.detach().abs().flatten().to(torch.float64)
                if method == "max" or percentile >= 100:
                    stats[name].append(float(a.max()))
                else:
                    kth = max(1, min(a.numel(), math.ceil(a.numel() * percentile / 100)))
                    stats[name].append(float(a.kthvalue(kth).values))
    ranges = {}
    for name, s in stats.items():
        if not s:
            continue
        r = max(s) if method == "max" or percentile >= 100 else sum(s) / len(s)
        ranges[name] = r if r > 0 and math.isfinite(r) else 1.0
    return ranges, shapes


def input_scale(mean, std) -> float:
    """Exact int8 scale of normalized [0, 1] pixels: ``max |(p - mean) / std| / 127``."""
    m = torch.as_tensor(mean, dtype=torch.float64)
    s = torch.as_tensor(std, dtype=torch.float64)
    if not bool((s > 0).all()):
        raise KepError(f"std must be positive, got {s.tolist()}")
    return float(torch.maximum((0 - m).abs() / s, (1 - m).abs() / s).max()) / INT8_MAX


def _check_masks(layers: list, masks: dict) -> None:
    conv = {ly.name: ly for ly in layers if ly.op == "conv"}
    for name, m in masks.items():
        if name not in conv:
            raise KepError(f"mask for {name!r}, which is not a conv layer of the model")
        w = conv[name].module.weight
        if not isinstance(m, torch.Tensor) or tuple(m.shape) != tuple(w.shape):
            raise KepError(f"mask of {name!r} must be a tensor of the weight shape "
                           f"{list(w.shape)}")
        kept = m.bool().flatten(2).sum(2)
        if kept.numel() and int(kept.min()) != int(kept.max()):
            raise KepError(f"layer {name!r}: KEP needs the same number of kept elements in "
                           f"every plane, found {int(kept.min())} to {int(kept.max())}")
        if kept.numel() and int(kept.min()) == 0:
            raise KepError(f"layer {name!r}: planes with K=0 are not supported")
        if bool((w.detach()[~m.bool()] != 0).any()):
            raise KepError(f"layer {name!r}: pruned elements (mask False) are not exactly 0")


def _quant_conv(ly: _Node, s_in: float, s_out: float, s_res: float | None, mask,
                in_shape, out_shape) -> KepLayer:
    w, b = fold_bn(ly.module, ly.bn)
    cout = w.shape[0]
    amax = w.abs().flatten(1).max(1).values
    s_w = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(w / s_w.view(-1, 1, 1, 1)).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    bias = torch.round(b / (s_in * s_w))
    if bool((bias.abs() >= 2**31).any()):
        raise KepError(f"layer {ly.name!r}: bias does not fit int32 after quantization")
    mults, shifts, rmults = [], [], []
    for o in range(cout):
        try:
            m, s, r = quantize_multiplier(s_in * float(s_w[o]) / s_out,
                                          res_real=None if s_res is None else s_res / s_out)
        except ValueError as e:
            raise KepError(f"layer {ly.name!r}, channel {o}: {e}")
        mults.append(m)
        shifts.append(s)
        rmults.append(r)
    k = ly.kernel_size
    layer = KepLayer(name=ly.name, op="conv", input=ly.input, in_shape=tuple(in_shape),
                     out_shape=tuple(out_shape), in_scale=s_in, out_scale=s_out,
                     kernel_size=k, stride=ly.stride, padding=ly.padding, relu=ly.relu,
                     residual=ly.residual, sparse=mask is not None,
                     bias=bias.to(torch.int32),
                     mult=torch.tensor(mults, dtype=torch.int32),
                     shift=torch.tensor(shifts, dtype=torch.int32),
                     res_mult=torch.tensor(rmults, dtype=torch.int32),
                     w_scale=s_w.to(torch.float32))
    if mask is None:
        layer.weight = q.contiguous()
    else:
        flat = mask.bool().flatten(2)                               # [Cout, Cin, k*k]
        big_k = int(flat[0, 0].sum())
        pos = torch.arange(k * k).expand_as(flat)
        # ascending positions of the kept elements: sort keys put kept ones first, in order
        key = torch.where(flat, pos, pos + k * k)
        index = key.sort(dim=2).values[..., :big_k]
        layer.index = index.to(torch.uint8).contiguous()
        layer.values = q.flatten(2).gather(2, index).contiguous()
    return layer


def quantize_model(model: nn.Module, *, masks: dict, calib: torch.Tensor, meta: dict,
                   method: str = "percentile", percentile: float = 99.99) -> KepModel:
    """Quantize a float model (eval mode, pruned elements exactly 0) to a :class:`KepModel`.

    Parameters
    ----------
    model : nn.Module
        Float model; it is traced with ``torch.fx`` and put in eval mode.
    masks : dict
        ``{conv module name: bool tensor shaped like its weight}`` (True = kept); these layers
        are stored sparse with the same K in every plane, all others dense.
    calib : torch.Tensor
        Float normalized training images ``[N, C, H, W]`` for activation calibration.
    meta : dict
        Metadata to store: at least ``mean`` and ``std`` (per input channel); also e.g.
        ``model_name``, ``dataset``, ``num_classes``, ``kep`` settings.
    method, percentile
        Calibration rule (see the module docstring).

    Returns
    -------
    KepModel

    Raises
    ------
    KepError
        Unsupported graph, bad masks (unequal K, non-zero pruned elements), bad metadata.
    """
    model = model.eval()
    masks = dict(masks or {})
    meta = dict(meta or {})
    for key in ("mean", "std"):
        if key not in meta:
            raise KepError(f"meta must contain {key!r} (input normalization)")
    layers, gm = extract_graph(model)
    _check_masks(layers, masks)
    ranges, shapes = calibrate(gm, layers, calib, method=method, percentile=percentile)
    s_input = input_scale(meta["mean"], meta["std"])
    scales = {"input": s_input}
    out_shapes = {"input": tuple(calib.shape[1:])}
    out = []
    for ly in layers:
        s_in, in_shape = scales[ly.input], out_shapes[ly.input]
        oshape = shapes[ly.name]
        if ly.op == "conv":
            s_out = ranges[ly.name] / INT8_MAX
            s_res = scales[ly.residual] if ly.residual else None
            kl = _quant_conv(ly, s_in, s_out, s_res, masks.get(ly.name), in_shape, oshape)
        elif ly.op == "maxpool":
            s_out = s_in
            kl = KepLayer(name=ly.name, op="maxpool", input=ly.input, in_shape=in_shape,
                          out_shape=oshape, in_scale=s_in, out_scale=s_out,
                          kernel_size=ly.kernel_size, stride=ly.stride, padding=ly.padding)
        elif ly.op == "avgpool":
            oshape = (in_shape[0],)
            s_out = s_in / (in_shape[1] * in_shape[2])
            kl = KepLayer(name=ly.name, op="avgpool", input=ly.input, in_shape=in_shape,
                          out_shape=oshape, in_scale=s_in, out_scale=s_out)
        else:  # linear
            w = ly.module.weight.detach().to(torch.float64)
            b = (ly.module.bias.detach().to(torch.float64) if ly.module.bias is not None
                 else torch.zeros(w.shape[0], dtype=torch.float64))
            amax = float(w.abs().max())
            s_w = amax / INT8_MAX if amax > 0 else 1.0
            s_out = s_in * s_w
            bias = torch.round(b / s_out)
            if bool((bias.abs() >= 2**31).any()):
                raise KepError(f"layer {ly.name!r}: bias does not fit int32")
            oshape = (w.shape[0],)
            kl = KepLayer(name=ly.name, op="linear", input=ly.input, in_shape=in_shape,
                          out_shape=oshape, in_scale=s_in, out_scale=s_out,
                          weight=torch.round(w / s_w).clamp(-INT8_MAX, INT8_MAX)
                          .to(torch.int8), bias=bias.to(torch.int32))
        scales[ly.name], out_shapes[ly.name] = s_out, tuple(oshape)
        out.append(kl)
    meta.update(format_version=KEP_FORMAT_VERSION, input_shape=list(calib.shape[1:]),
                input_scale=s_input, mean=[float(v) for v in meta["mean"]],
                std=[float(v) for v in meta["std"]],
                calibration={"method": method, "percentile": percentile,
                             "images": int(calib.shape[0])})
    from kep_train import __version__
    meta.setdefault("toolkit_version", __version__)
    kep = KepModel(layers=out, meta=meta)
    from kep_train.export.kepfile import dumps_kep
    dumps_kep(kep)  # validate now: a defect is a bug here, not in a later reader
    return kep


def export_kep(model: nn.Module, path: str | os.PathLike, *, masks: dict,
               calib: torch.Tensor, meta: dict, method: str = "percentile",
               percentile: float = 99.99) -> KepModel:
    """Quantize ``model`` (:func:`quantize_model`) and write it to ``path`` atomically.

    Parameters and exceptions are those of :func:`quantize_model`; returns the
    :class:`KepModel` that was written.
    """
    kep = quantize_model(model, masks=masks, calib=calib, meta=meta, method=method,
                         percentile=percentile)
    save_kep(path, kep)
    return kep


def kep_from_checkpoint(ckpt_path: str | os.PathLike, calib: torch.Tensor, *,
                        method: str = "percentile", percentile: float = 99.99,
                        model_spec: str | None = None) -> KepModel:
    """Quantize the model of a training checkpoint (masks, mean/std and KEP settings from it).

    ``model_spec`` is the ``--model`` the user gave: required (and equal) when the checkpoint
    records a user model ``module:callable``, which is never imported on the checkpoint's word
    (:func:`kep_train.train.checkpoint.model_from_checkpoint`).

    Raises
    ------
    KepError
        Bad checkpoint (see :func:`kep_train.train.checkpoint.load_checkpoint`), a user model
        without ``model_spec``, or quantization error.
    """
    from kep_train.train.checkpoint import model_from_checkpoint
    model, ckpt = model_from_checkpoint(ckpt_path, model_spec)
    meta = {"model_name": ckpt["model_name"], "num_classes": int(ckpt["num_classes"]),
            "dataset": ckpt.get("dataset", "cifar10"), "checkpoint": str(ckpt_path),
            "kep": jsonable(ckpt.get("kep") or {})}
    for key in ("mean", "std"):
        if key not in ckpt:
            raise KepError(f"checkpoint {str(ckpt_path)!r} lacks {key!r}")
        meta[key] = [float(v) for v in torch.as_tensor(ckpt[key]).flatten()]
    masks = {k: v.bool() for k, v in (ckpt.get("masks") or {}).items()}
    return quantize_model(model, masks=masks, calib=calib, meta=meta, method=method,
                          percentile=percentile)


def float_sparse_tensors(model: nn.Module, masks: dict) -> dict:
    """Float ``(values, index)`` of every masked conv (no BN folding, no quantization).

    Returns
    -------
    dict
        ``{name: {"values": float [Cout, Cin, K], "index": uint8 [Cout, Cin, K]}}``.

    Raises
    ------
    KepError
        Unknown layer, wrong mask shape or unequal K per plane.
    """
    mods = dict(model.named_modules())
    out = {}
    for name, m in masks.items():
        mod = mods.get(name)
        if not isinstance(mod, nn.Conv2d) or tuple(m.shape) != tuple(mod.weight.shape):
            raise KepError(f"mask {name!r} does not match a conv layer of the model")
        flat = m.bool().flatten(2)
        kept = flat.sum(2)
        if int(kept.min()) != int(kept.max()):
            raise KepError(f"layer {name!r}: unequal K per plane")
        kk = flat.shape[2]
        pos = torch.arange(kk).expand_as(flat)
        index = torch.where(flat, pos, pos + kk).sort(dim=2).values[..., :int(kept.max())]
        out[name] = {"values": mod.weight.detach().flatten(2).gather(2, index),
                     "index": index.to(torch.uint8)}
    return out
