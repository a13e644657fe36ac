# SPDX-License-Identifier: Apache-2.0
"""Outputs of a pipeline run: ``report.json``, plots, and the compressed ``model.kep``."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from kep_common.errors import KepError
from kep_common.fileio import atomic_path, atomic_write_json, environment_info, jsonable
from kep_train.pruning import bake_masks, count_costs

__all__ = ["write_outputs", "plot_accuracy", "plot_kept_fraction", "plot_kernel_heatmap",
           "index_bytes"]


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
    final = r.history[-1]["test_top1"] if r.history else None
    report = {
        "command": "python -m kep_train " + data.name,
        "args": {k: v for k, v in vars(a).items() if k != "halt_after"},
        "schedule": jsonable(pipe.sched),
        "model": a.model, "method": a.method, "dataset": data.name,
        "top1": {"dense": r.dense_top1, "pruned": final},
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
        "environment": environment_info(),
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
            print(f"warning: model.kep not written: {e}")
    atomic_write_json(out / "report.json", report)
    try:
        plot_accuracy(r.history, out / "accuracy.png")
        plot_kept_fraction(layers, out / "kept_fraction.png")
        if masks:
            plot_kernel_heatmap(masks, out / "kernel_heatmap.png")
    except Exception as e:  # a plot must never lose the run's results
        print(f"warning: plotting failed: {e}")
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
    export_kep(model, path, masks=sparse, calib=calib, meta=meta)
    return {"path": str(path), "bytes": path.stat().st_size,
            "dense_int8_bytes": report["totals"]["params"]}


def _save_fig(fig, path: Path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_accuracy(history: list[dict], path: Path) -> None:
    """Test top-1 per epoch, coloured by stage."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    x = 0
    colors = {"dense": "tab:blue", "reg": "tab:orange", "finetune": "tab:green",
              "pretrained": "tab:gray"}
    for stage in ("pretrained", "dense", "reg", "finetune"):
        pts = []
        for i, h in enumerate(history):
            if h["stage"] == stage:
                pts.append((i, h["test_top1"]))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors[stage],
                    label=stage, markersize=3)
        x += len(pts)
    ax.set_xlabel("epoch (all stages)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Accuracy per stage")
    _save_fig(fig, path)
    plt.close(fig)


def plot_kept_fraction(layers: list[dict], path: Path) -> None:
    """Kept fraction of the weights of every conv/linear layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers)), 4))
    names = [x["name"] for x in layers]
    vals = [x["kept_fraction"] for x in layers]
    ax.bar(range(len(vals)), vals, color=["tab:orange" if x["pruned"] else "tab:blue"
                                          for x in layers])
    ax.set_xticks(range(len(vals)), names, rotation=90, fontsize=7)
    ax.set_ylabel("kept fraction of weights")
    ax.set_ylim(0, 1.05)
    ax.set_title("Kept weights per layer (orange: pruned)")
    _save_fig(fig, path)
    plt.close(fig)


def plot_kernel_heatmap(masks: dict[str, torch.Tensor], path: Path) -> None:
    """Share of planes in which each kernel position survives, one row per pruned layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, names = [], []
    for n, m in masks.items():
        if m.dim() == 4 and m.shape[2] * m.shape[3] > 1:
            rows.append(m.float().mean(dim=(0, 1)).flatten())
            names.append(n)
    if not rows:
        return
    mat = torch.stack(rows).numpy()
    fig, ax = plt.subplots(figsize=(5, max(3, 0.3 * len(rows))))
    im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    k = int(round(mat.shape[1] ** 0.5))
    ax.set_xticks(range(mat.shape[1]), [f"{i // k},{i % k}" for i in range(mat.shape[1])],
                  fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("kernel position (row, col)")
    fig.colorbar(im, ax=ax, label="share of planes keeping it")
    ax.set_title("Which kernel positions survive")
    _save_fig(fig, path)
    plt.close(fig)
