# SPDX-License-Identifier: Apache-2.0
"""Outputs of a pipeline run: ``metrics.jsonl`` (while it runs), ``report.json``, plots, and the
compressed ``model.kep``.

``metrics.jsonl`` holds one JSON object per line, one per epoch (plus a ``pretrained`` line for
the evaluation of a ``--pretrained`` start), the same records as ``report.json``'s ``history``:
``stage``, ``epoch`` (within the stage), ``train_loss``, ``train_top1``, ``test_top1`` (%;
``null`` on the epochs that ``--eval-every`` skips), ``test_correct``/``test_images`` (when the
data set counts them and the epoch was evaluated), ``lr`` (of the epoch's last
step), ``seconds``, and in the reg stage ``lambda`` and ``masked_share``. A line is appended and
flushed after each epoch; a run started or resumed rewrites the file from its checkpoint's
history first, so a resumed run never repeats an epoch.

Plots are drawn on :class:`matplotlib.figure.Figure` objects with their own Agg canvas (no
pyplot, no backend switch); the ``*_figure`` functions return them for inspection.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path

import torch

from kep_common.errors import KepError
from kep_common.fileio import (atomic_path, atomic_write_bytes, atomic_write_json,
                               environment_info, jsonable)
from kep_train.pruning import bake_masks, count_costs

__all__ = ["METRICS_FILE", "write_outputs", "rewrite_metrics", "append_metrics", "top1_summary",
           "accuracy_figure", "kept_fraction_figure", "kernel_heatmap_figure", "plot_accuracy",
           "plot_kept_fraction", "plot_kernel_heatmap", "index_bytes"]

log = logging.getLogger(__name__)

#: per-epoch metrics in the output folder, one JSON object per line
METRICS_FILE = "metrics.jsonl"


def rewrite_metrics(out: str | os.PathLike, history: list[dict]) -> None:
    """Replace ``out/metrics.jsonl`` by ``history``, one line per record (atomically)."""
    text = "".join(json.dumps(jsonable(h)) + "\n" for h in history)
    atomic_write_bytes(Path(out) / METRICS_FILE, text.encode())


def append_metrics(out: str | os.PathLike, record: dict) -> None:
    """Append one record to ``out/metrics.jsonl`` and flush it to disk."""
    with open(Path(out) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(jsonable(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _pct(correct: int, images: int) -> float:
    return round(100 * correct / images, 4) if images else 0.0


def top1_summary(history: list[dict], dense_top1: float | None) -> dict:
    """The ``top1`` entry of report.json: ``dense`` and ``pruned`` top-1 in % rounded to 4
    decimals; with ``images``, ``dense_correct`` and ``pruned_correct`` when the evaluations
    recorded their counts (computed from the counts then, exactly).

    Parameters
    ----------
    history : list of dict
        The run's epoch records; the last one is the final (pruned) model's.
    dense_top1 : float or None
        Top-1 of the dense model (that of the last ``dense`` or ``pretrained`` record).
    """
    res: dict = {"dense": None if dense_top1 is None else round(dense_top1, 4), "pruned": None}
    if not history:
        return res
    last = history[-1]
    res["pruned"] = round(last["test_top1"], 4)
    if "test_correct" in last and "test_images" in last:
        res["images"] = last["test_images"]
        res["pruned"] = _pct(last["test_correct"], last["test_images"])
        res["pruned_correct"] = last["test_correct"]
    dense = [h for h in history if h["stage"] in ("dense", "pretrained")]
    if dense_top1 is not None and dense and "test_correct" in dense[-1]:
        c, n = dense[-1]["test_correct"], dense[-1]["test_images"]
        if n and abs(100 * c / n - dense_top1) < 1e-3:
            res["dense"] = _pct(c, n)
            res["dense_correct"] = c
            res.setdefault("images", n)
    return res


def index_bytes(cout: int, cin: int, keep: int, kernel: int) -> int:
    """Bytes of the (packed) indices of a layer: ceil(log2(k*k)) bits per kept element."""
    bits = max(1, (kernel * kernel - 1).bit_length())
    return (cout * cin * keep * bits + 7) // 8


def _layer_table(costs_dense, costs_kept, keep, masks):
    kept = {c.name: c for c in costs_kept}
    rows = []
    for c in costs_dense:
        k = kept[c.name]
        row = {"name": c.name, "kind": c.kind, "kernel": c.kernel, "in": c.in_channels,
               "out": c.out_channels, "out_hw": list(c.out_hw), "K": keep.get(c.name),
               "params": c.params, "params_kept": k.params_kept, "macs": c.macs,
               "macs_kept": k.macs_kept, "pruned": c.name in masks,
               "kept_fraction": round(k.params_kept / c.params, 6)}
        if c.name in keep:
            row["index_bytes"] = index_bytes(c.out_channels, c.in_channels, keep[c.name],
                                             c.kernel)
        rows.append(row)
    return rows


def write_outputs(pipe, r) -> dict:
    """Bake the masks, export ``model.kep``, write ``report.json`` and the plots."""
    a = pipe.args
    out = Path(a.out)
    model = copy.deepcopy(r.model).cpu()
    masks = bake_masks(model)
    model.eval()
    data = pipe.data
    costs = count_costs(model, data.input_shape)
    keep = r.kep.get("keep", {}) if r.kep.get("method") == "kep" else {}
    layers = _layer_table(pipe.costs_dense, costs, keep, masks)
    tot = lambda rows, key: sum(x[key] for x in rows)  # noqa: E731
    pruned_rows = [x for x in layers if x["name"] in pipe.layers]
    report = {
        "command": "python -m kep_train " + data.name,
        "args": {k: v for k, v in vars(a).items() if k != "halt_after"},
        "schedule": jsonable(pipe.sched),
        "model": a.model, "method": a.method, "dataset": data.name,
        "top1": top1_summary(r.history, r.dense_top1),
        "kep": {k: v for k, v in r.kep.items() if k != "layers"},
        "totals": {
            "params": tot(layers, "params"), "params_kept": tot(layers, "params_kept"),
            "macs": tot(layers, "macs"), "macs_kept": tot(layers, "macs_kept"),
            "params_reduction": 1 - tot(layers, "params_kept") / tot(layers, "params"),
            "macs_reduction": 1 - tot(layers, "macs_kept") / tot(layers, "macs"),
            "pruned_layers_macs_reduction": (
                1 - tot(pruned_rows, "macs_kept") / tot(pruned_rows, "macs")
                if pruned_rows else 0.0),
            "index_bytes": sum(x.get("index_bytes", 0) for x in layers),
        },
        "layers": layers,
        "seconds": {**{k: round(v, 1) for k, v in r.stage_seconds.items()},
                    "total": round(sum(r.stage_seconds.values()), 1)},
        "history": r.history,
        "environment": {**environment_info(), **getattr(pipe, "allocator", {})},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    extra = getattr(pipe, "report_extra", None)
    if extra is not None:
        report.update(extra(r))
    if not a.no_export:
        try:
            report["export"] = _export(pipe, model, masks, keep, out, report)
        except KepError as e:
            if pipe.strict_export:
                raise
            # e.g. torchvision graphs the exporter does not know: the results still count
            report["export"] = {"exported": False, "reason": str(e)}
            log.warning("model.kep not written: %s", e)
    atomic_write_json(out / "report.json", report)
    try:
        plot_accuracy(r.history, out / "accuracy.png")
        plot_kept_fraction(layers, out / "kept_fraction.png")
        if masks:
            plot_kernel_heatmap(masks, out / "kernel_heatmap.png")
    except Exception as e:  # a plot must never lose the run's results
        log.warning("plotting failed: %s", e)
    return report


def _export(pipe, model, masks, keep, out: Path, report) -> dict:
    """Write ``model.kep`` (int8, calibrated on training images)."""
    from kep_train.export.quantize import export_kep
    data = pipe.data
    calib = pipe.calibration_batch()
    sparse = {n: m for n, m in masks.items() if n in keep}
    meta = {"model_name": pipe.args.model, "dataset": data.name, "mean": list(data.mean),
            "std": list(data.std), "input_shape": list(data.input_shape),
            "kep": {"method": pipe.args.method, "keep": keep,
                    "importance": pipe.args.importance,
                    "penalty": report["kep"].get("penalty")},
            "checkpoint": str(out / "checkpoint.pt"),
            "float_top1": report["top1"]["pruned"]}
    path = out / "model.kep"
    kep = export_kep(model, path, masks=sparse, calib=calib, meta=meta)
    from kep_train.export.hardware import hardware_problems, warn_hardware
    problems = hardware_problems(kep)
    warn_hardware(problems)         # the .kep stays valid for the golden model
    return {"path": str(path), "bytes": path.stat().st_size,
            "dense_int8_bytes": report["totals"]["params"], "hardware_problems": problems}


def _figure(size):
    """A figure with its own Agg canvas: no pyplot, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save_fig(fig, path: Path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


_STAGE_COLORS = {"pretrained": "tab:gray", "dense": "tab:blue", "reg": "tab:orange",
                 "finetune": "tab:green"}


def accuracy_figure(history: list[dict]):
    """Top-1 per epoch (test solid, training dashed), coloured by stage; the x axis counts
    whole epochs over all stages (a ``pretrained`` evaluation sits at epoch 0).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.ticker import MaxNLocator
    fig = _figure((7, 4))
    ax = fig.add_subplot()
    epoch = 0
    xs: dict[str, list] = {}
    for h in history:
        if h["stage"] != "pretrained":
            epoch += 1
        xs.setdefault(h["stage"], []).append((epoch, h))
    for stage, pts in xs.items():
        color = _STAGE_COLORS.get(stage)
        test = [(x, h["test_top1"]) for x, h in pts if h.get("test_top1") is not None]
        ax.plot([x for x, _ in test], [y for _, y in test], "o-", color=color,
                label=f"{stage}: test", markersize=3)
        train = [(x, h["train_top1"]) for x, h in pts if "train_top1" in h]
        if train:
            ax.plot([x for x, _ in train], [y for _, y in train], "s--", color=color,
                    label=f"{stage}: training", markersize=2, alpha=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (all stages)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy per epoch")
    return fig


def kept_fraction_figure(layers: list[dict]):
    """Kept fraction of the weights of every conv/linear layer (pruned layers in orange).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.patches import Patch
    fig = _figure((max(6, 0.35 * len(layers)), 4))
    ax = fig.add_subplot()
    names = [x["name"] for x in layers]
    vals = [x["kept_fraction"] for x in layers]
    ax.bar(range(len(vals)), vals, color=["tab:orange" if x["pruned"] else "tab:blue"
                                          for x in layers])
    ax.set_xticks(range(len(vals)), names, rotation=90, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("kept fraction of weights")
    ax.set_ylim(0, 1.05)
    ax.legend(handles=[Patch(color="tab:orange", label="pruned"),
                       Patch(color="tab:blue", label="not pruned")], fontsize=8)
    ax.set_title("Kept weights per layer")
    return fig


def kernel_heatmap_figure(masks: dict[str, torch.Tensor]):
    """Share of planes in which each kernel position survives, one row per pruned layer (of the
    most common kernel size); the colour scale spans the data's own minimum and maximum (colour
    bar beside it).

    Returns
    -------
    matplotlib.figure.Figure or None
        None when no mask has a kernel larger than 1x1.
    """
    shares = {n: m.float().mean(dim=(0, 1)).flatten() for n, m in masks.items()
              if m.dim() == 4 and m.shape[2] * m.shape[3] > 1}
    if not shares:
        return None
    sizes = [r.numel() for r in shares.values()]
    common = max(set(sizes), key=sizes.count)     # one kernel size per map (3x3 in practice)
    names = [n for n, r in shares.items() if r.numel() == common]
    rows = [shares[n] for n in names]
    mat = torch.stack(rows).numpy()
    lo, hi = float(mat.min()), float(mat.max())
    if hi - lo < 1e-9:   # one value everywhere: a small band around it
        lo, hi = lo - 0.01, hi + 0.01
    fig = _figure((5, max(3, 0.3 * len(rows))))
    ax = fig.add_subplot()
    im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=lo, vmax=hi)
    k = int(round(mat.shape[1] ** 0.5))
    ax.set_xticks(range(mat.shape[1]), [f"{i // k},{i % k}" for i in range(mat.shape[1])],
                  fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("kernel position (row, col)")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="share of planes keeping the position")
    ax.set_title("Which kernel positions survive")
    return fig


def plot_accuracy(history: list[dict], path: Path) -> None:
    """Write :func:`accuracy_figure` as a PNG (atomically)."""
    _save_fig(accuracy_figure(history), path)


def plot_kept_fraction(layers: list[dict], path: Path) -> None:
    """Write :func:`kept_fraction_figure` as a PNG (atomically)."""
    _save_fig(kept_fraction_figure(layers), path)


def plot_kernel_heatmap(masks: dict[str, torch.Tensor], path: Path) -> None:
    """Write :func:`kernel_heatmap_figure` as a PNG (atomically); nothing without 3x3 masks."""
    fig = kernel_heatmap_figure(masks)
    if fig is not None:
        _save_fig(fig, path)
