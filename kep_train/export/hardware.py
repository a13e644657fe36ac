# SPDX-License-Identifier: Apache-2.0
"""What the ``kep_hw`` accelerator can run: its rules as plain data, in one place.

A ``.kep`` file holds any network of the format (``docs/kep-format.md``); the golden model runs
them all. The accelerator runs a subset: :data:`RULES` says which, :func:`hardware_problems`
lists, one line per layer, what in a model falls outside it. The exporter warns with these
lines (``python -m kep_train export``, the end of ``cifar``/``imagenet``; ``export --strict-hw``
refuses to write the file instead); the board planner (``kep_hw.system.plan``) reads the
same rules from here.

The network runs as:

1. **on chip**, the layers of :data:`ON_CHIP_OPS` (conv, max pooling), first in the layer
   list; each reads the network input or an earlier on-chip layer's output, and so does a conv
   layer's residual;
2. then the **head** :data:`HEAD` -- global average pooling of the last on-chip layer's output,
   then one linear classifier -- or nothing (the board returns the last on-chip output).

Per layer (:data:`RULES`): conv kernel 1x1 or 3x3, stride 1 or 2, padding 0 or 1, K <= k*k
kept elements per plane, groups 1 (the ``.kep`` format has no other), dilation 1; max pooling
2x2, stride 2, padding 0.

This module imports nothing of ``kep_hw`` (``kep_hw`` reads it) and no torch at import time.
"""

from __future__ import annotations

import logging

__all__ = ["RULES", "ON_CHIP_OPS", "HEAD", "conv_problems", "maxpool_problems",
           "layer_problems", "hardware_problems", "module_problems", "strict_hw_message",
           "warn_hardware"]

log = logging.getLogger(__name__)

#: per-operation limits of the accelerator: field -> the values it runs
RULES: dict = {
    "conv": {"kernel_size": (1, 3), "stride": (1, 2), "padding": (0, 1), "groups": (1,),
             "dilation": (1,)},
    "maxpool": {"kernel_size": (2,), "stride": (2,), "padding": (0,)},
}
#: operations that run on chip, as a prefix of the layer list
ON_CHIP_OPS = ("conv", "maxpool")
#: the head after the on-chip layers: exactly these, in this order (or no head at all)
HEAD = ("avgpool", "linear")


def _runs(values, unit: str = "") -> str:
    """``1x1 and 3x3`` / ``1 and 2`` / ``1 only``."""
    text = [f"{v}x{v}" if unit == "kernel" else str(v) for v in values]
    if len(text) == 1:
        return f"{text[0]} only"
    return ", ".join(text[:-1]) + " and " + text[-1]


def _square(v):
    """An int for a square value (``3``, ``(3, 3)``), else the value as it is."""
    if isinstance(v, (tuple, list)) and len(set(v)) == 1:
        return int(v[0])
    return v


def _kernel_text(v) -> str:
    if isinstance(v, (tuple, list)):
        return "x".join(str(x) for x in v)
    return f"{v}x{v}"


def _val(v) -> str:
    """``3``, ``2x1`` for a pair, ``'same'`` for a string."""
    if isinstance(v, (tuple, list)):
        return "x".join(str(x) for x in v)
    return repr(v) if isinstance(v, str) else str(v)


def conv_problems(kernel_size, stride, padding, K: int | None = None, groups: int = 1,
                  dilation=1) -> list[str]:
    """Why the accelerator cannot run a conv layer with these settings (empty: it can).

    ``kernel_size``, ``stride``, ``padding``, ``dilation`` are ints or (h, w) pairs (a
    non-square value is a problem); ``padding`` may be a string (``"same"``: a problem).
    """
    rules, out = RULES["conv"], []
    k, s, p, d = (_square(v) for v in (kernel_size, stride, padding, dilation))
    if k not in rules["kernel_size"]:
        out.append(f"kernel {_kernel_text(kernel_size)} (the accelerator runs "
                   f"{_runs(rules['kernel_size'], 'kernel')})")
    if s not in rules["stride"]:
        out.append(f"stride {_val(s)} (the accelerator runs stride {_runs(rules['stride'])})")
    if p not in rules["padding"]:
        out.append(f"padding {_val(p)} (the accelerator runs padding "
                   f"{_runs(rules['padding'])})")
    if groups not in rules["groups"]:
        out.append(f"groups {groups} (the accelerator runs groups {_runs(rules['groups'])})")
    if d not in rules["dilation"]:
        out.append(f"dilation {_val(d)} (the accelerator runs dilation "
                   f"{_runs(rules['dilation'])})")
    if K is not None and isinstance(k, int) and not 1 <= K <= k * k:
        out.append(f"K {K} kept elements per plane (the accelerator runs 1 <= K <= k*k = "
                   f"{k * k})")
    return out


def maxpool_problems(kernel_size, stride, padding, dilation=1,
                     ceil_mode: bool = False) -> list[str]:
    """Why the accelerator cannot run a max pooling with these settings (empty: it can)."""
    rules = RULES["maxpool"]
    k, s, p, d = (_square(v) for v in (kernel_size, stride, padding, dilation))
    if (k in rules["kernel_size"] and s in rules["stride"] and p in rules["padding"]
            and d == 1 and not ceil_mode):
        return []
    extra = (f" dilation {_val(d)}" if d != 1 else "") + (" ceil_mode" if ceil_mode else "")
    return [f"max pooling {_kernel_text(kernel_size)} stride {_val(s)} padding {_val(p)}{extra} "
            f"(the accelerator runs {_runs(rules['kernel_size'], 'kernel')}, stride "
            f"{_runs(rules['stride'])}, padding {_runs(rules['padding'])})"]


def layer_problems(layer) -> list[str]:
    """The per-layer rules on one layer of a ``.kep`` model (a
    :class:`~kep_train.export.kepfile.KepLayer`): the reasons, without the layer's name; empty
    for avgpool/linear layers (where they sit is :func:`hardware_problems`' business)."""
    if layer.op == "conv":
        return conv_problems(layer.kernel_size, layer.stride, layer.padding, K=layer.K)
    if layer.op == "maxpool":
        return maxpool_problems(layer.kernel_size, layer.stride, layer.padding)
    return []


def hardware_problems(kep_model) -> list[str]:
    """What the ``kep_hw`` accelerator cannot run in a ``.kep`` model: one line per layer
    (``layer 'features.3': kernel 5x5 (the accelerator runs 1x1 and 3x3)``, several reasons of
    one layer joined by ``; ``) plus lines on the network's shape (the head, no conv layer).

    Parameters
    ----------
    kep_model : KepModel or torch.nn.Module
        A ``.kep`` model (:class:`~kep_train.export.kepfile.KepModel`): every rule. A float
        ``nn.Module`` is also taken (:func:`module_problems`: the per-layer rules only, before
        any export, e.g. on a grouped conv that the ``.kep`` format cannot even hold).

    Returns
    -------
    list of str
        Empty when the accelerator runs the whole model.
    """
    if not hasattr(kep_model, "layers"):
        return module_problems(kep_model)
    lines = []
    on_chip = {"input"}         # tensors the accelerator holds
    last_chip = None
    head = []
    for ly in kep_model.layers:
        reasons = []
        if ly.op in ON_CHIP_OPS:
            if head:
                reasons.append(f"{ly.op} after the head started at {head[0].name!r} (the "
                               "accelerator runs conv/maxpool layers first, then "
                               f"{' and '.join(HEAD)})")
            reasons += layer_problems(ly)
            for what, src in (("input", ly.input), ("residual", ly.residual)):
                if src is not None and src not in on_chip:
                    reasons.append(f"{what} {src!r} is not on chip (it must be the network "
                                   "input or an earlier conv/maxpool layer's output)")
            on_chip.add(ly.name)
            last_chip = ly.name
        else:
            pos = len(head)
            if pos >= len(HEAD) or ly.op != HEAD[pos]:
                reasons.append(f"{ly.op} where the accelerator's head has "
                               + (f"ended (it runs {' then '.join(HEAD)} once, at the end)"
                                  if pos >= len(HEAD) else f"{HEAD[pos]} ({' then '.join(HEAD)}"
                                  " after the conv/maxpool layers)"))
            elif pos == 0 and ly.input != last_chip:
                reasons.append(f"avgpool reads {ly.input!r}, not the last on-chip layer "
                               f"{last_chip!r}")
            elif pos > 0 and ly.input != head[-1].name:
                reasons.append(f"{ly.op} reads {ly.input!r}, not {head[-1].name!r}")
            head.append(ly)
        if reasons:
            lines.append(f"layer {ly.name!r}: " + "; ".join(reasons))
    if not any(ly.op == "conv" for ly in kep_model.layers):
        lines.append("the network has no conv layer (the accelerator runs conv layers)")
    if head and len(head) < len(HEAD):
        lines.append(f"layer {head[-1].name!r}: the network ends with {head[-1].op} (the "
                     f"accelerator's head is {' then '.join(HEAD)}, or none)")
    return lines


def module_problems(model) -> list[str]:
    """The per-layer rules on the ``Conv2d``/``MaxPool2d`` modules of a float
    ``torch.nn.Module``: one line per module (``layer 'path': ...``). Other module types and
    the network's shape are the exporter's to judge (:func:`hardware_problems` on the ``.kep``
    has every rule)."""
    from torch import nn
    lines = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            reasons = conv_problems(m.kernel_size, m.stride, m.padding, groups=m.groups,
                                    dilation=m.dilation)
        elif isinstance(m, nn.MaxPool2d):
            reasons = maxpool_problems(m.kernel_size, m.stride if m.stride is not None
                                       else m.kernel_size, m.padding, m.dilation, m.ceil_mode)
        else:
            continue
        if reasons:
            lines.append(f"layer {name!r}: " + "; ".join(reasons))
    return lines


def warn_hardware(problems: list[str]) -> None:
    """Log one ``warning: kep_hw accelerator: ...`` line per problem."""
    for line in problems:
        log.warning("kep_hw accelerator: %s", line)


def strict_hw_message(problems: list[str]) -> str:
    """The one error line of ``--strict-hw``: the count and the first problem."""
    n = len(problems)
    return (f"--strict-hw: the accelerator cannot run this model ({n} problem"
            f"{'s' if n != 1 else ''}; the first: {problems[0]})")
