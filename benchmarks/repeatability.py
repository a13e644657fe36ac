# SPDX-License-Identifier: Apache-2.0
"""Repeatability of ``python -m kep_train cifar``: where two runs of the same command with the
same ``--seed`` part, and which settings make them repeatable.

    python benchmarks/repeatability.py --data-dir ../shared/data/cifar10 --runs runs/repeat

Every variant is one small ``python -m kep_train cifar`` subprocess (default budget:
``--subset 2048 --test-subset 1000``, one epoch per stage, ``--no-export``) into
``RUNS/<variant>`` (its log in ``RUNS/<variant>.log``); a variant whose ``report.json`` exists
is skipped, one without (a killed run) is started again from scratch, so the same command
resumes a killed study. The variants (``--variants`` picks some; ``t2-a`` is the reference and
always runs):

  t2-a           --threads 2 (the reference)
  t2-b           --threads 2 again: same command, same machine, later (other load)
  t1             --threads 1
  t0-default     no --threads: torch's default (the number of cores; the main job's command)
  t2-nocache     --threads 2 --no-cache: the images decoded again, no cache read or written
  t2-freshcache  --threads 2 with KEP_CACHE set to an empty folder (a fresh clone's first run)
  t2-nomkldnn    --threads 2 with torch.backends.mkldnn.enabled = False (set by a
                 ``python -c`` wrapper before kep_train's main: other convolution kernels)
  t2-avx2        --threads 2 with ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2,
                 MKL_ENABLE_INSTRUCTIONS=AVX2: the kernels an AVX2-only CPU would run

Each variant is compared with ``t2-a``: per-epoch ``train_loss`` and test correct counts of
report.json's ``history`` (equal or not, the first epoch where they part, the largest loss
difference), the final top-1, and SHA-256 digests of the weights in ``dense.pt`` (end of the
dense stage) and ``checkpoint.pt`` (final; read with ``torch.load(weights_only=True)``).
The decoded images are compared too: the tensors of the cache file the runs read (default
cache folder) against the ones that ``t2-freshcache`` decoded into its empty cache.

A step-level probe (``--no-probe`` skips it) runs one forward + backward pass of a freshly
seeded ResNet-20 on one fixed random batch under each thread / kernel setting, in its own
subprocess, and compares the output, the loss and every gradient bit for bit with 2 threads.

Writes ``--out`` (default ``benchmarks/results/repeatability.json``, with versions, machine
and load average) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    from kep_common.errors import KepError, cli_errors
except ImportError:   # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kep_common.errors import KepError, cli_errors
from kep_common.fileio import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = "t2-a"
FRESH_CACHE = "_cache-fresh"        # KEP_CACHE folder of t2-freshcache, inside RUNS
PROBE_DIR = "_probe"
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
#: the wrapper that runs kep_train's main with oneDNN (MKLDNN) convolutions switched off
NO_MKLDNN_WRAPPER = ("import sys, torch; torch.backends.mkldnn.enabled = False; "
                     "from kep_train.__main__ import main; sys.exit(main(sys.argv[1:]))")


@dataclass(frozen=True)
class Variant:
    """One way of running the same command."""

    name: str
    what: str
    threads: int = 2                    # 0: no --threads (torch's default)
    no_cache: bool = False
    fresh_cache: bool = False
    mkldnn: bool = True
    env: dict = field(default_factory=dict)


VARIANTS = (
    Variant("t2-a", "--threads 2 (reference)"),
    Variant("t2-b", "--threads 2, same command again"),
    Variant("t1", "--threads 1", threads=1),
    Variant("t0-default", "no --threads (torch default)", threads=0),
    Variant("t2-nocache", "--threads 2 --no-cache (decoded again)", no_cache=True),
    Variant("t2-freshcache", "--threads 2, empty KEP_CACHE folder", fresh_cache=True),
    Variant("t2-nomkldnn", "--threads 2, torch.backends.mkldnn off", mkldnn=False),
    Variant("t2-avx2", "--threads 2, AVX2 kernels (ATen, oneDNN, MKL)", env=AVX2_ENV),
)
BY_NAME = {v.name: v for v in VARIANTS}

#: (name, threads, mkldnn, env) of the step-level probe; the first is its reference
PROBES = (("t2", 2, True, {}), ("t2-again", 2, True, {}), ("t1", 1, True, {}),
          ("t2-nomkldnn", 2, False, {}), ("t2-avx2", 2, True, AVX2_ENV))


# ------------------------------------------------------------------------------------------
# commands

def run_command(v: Variant, opts, out: Path) -> list[str]:
    """The ``python -m kep_train cifar`` command of variant ``v`` (argv)."""
    head = ([sys.executable, "-m", "kep_train"] if v.mkldnn
            else [sys.executable, "-c", NO_MKLDNN_WRAPPER])
    cmd = head + ["cifar", "--data-dir", str(opts.data_dir), "--out", str(out),
                  "--seed", str(opts.seed), "--subset", str(opts.subset),
                  "--test-subset", str(opts.test_subset),
                  "--dense-epochs", str(opts.epochs), "--reg-epochs", str(opts.epochs),
                  "--finetune-epochs", str(opts.epochs), "--no-progress", "--no-export"]
    if v.threads:
        cmd += ["--threads", str(v.threads)]
    if v.no_cache:
        cmd.append("--no-cache")
    return cmd


def run_env(v: Variant, runs: Path) -> dict:
    """Environment overrides of variant ``v``."""
    env = dict(v.env)
    if v.fresh_cache:
        env["KEP_CACHE"] = str((runs / FRESH_CACHE).resolve())
    return env


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_variant(v: Variant, opts, log) -> dict:
    """Run variant ``v`` unless its report.json exists; returns its run record."""
    runs = Path(opts.runs)
    out = runs / v.name
    meta_path = runs / f"{v.name}.run.json"
    cmd, env = run_command(v, opts, out), run_env(v, runs)
    if (out / "report.json").is_file():
        log(f"{v.name}: skipped, {out}/report.json exists")
        try:
            return json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return {"command": shlex.join(cmd), "env": env, "rc": 0}
    if out.exists():       # a killed run of this variant: start it again from scratch
        log(f"{v.name}: removing the unfinished {out}")
        shutil.rmtree(out)
    if v.fresh_cache:      # must start empty
        shutil.rmtree(runs / FRESH_CACHE, ignore_errors=True)
        (runs / FRESH_CACHE).mkdir(parents=True)
    log(f"{v.name}: {' '.join(f'{k}={x}' for k, x in env.items())} {shlex.join(cmd)}".strip())
    load0, t0 = _loadavg(), time.time()
    with open(runs / f"{v.name}.log", "w") as f:
        rc = subprocess.run(cmd, env={**os.environ, **env}, stdout=f,
                            stderr=subprocess.STDOUT).returncode
    rec = {"command": shlex.join(cmd), "env": env, "rc": rc,
           "wall_s": round(time.time() - t0, 1), "loadavg_start": load0,
           "loadavg_end": _loadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                                               time.localtime(t0))}
    atomic_write_json(meta_path, rec)
    log(f"{v.name}: exit code {rc} after {rec['wall_s']} s")
    return rec


# ------------------------------------------------------------------------------------------
# comparisons (pure functions)

def _epoch_label(rec: dict) -> str:
    return f"{rec.get('stage')} {rec.get('epoch')}"


def compare_histories(ref: list[dict], other: list[dict]) -> dict:
    """Compare two report.json ``history`` lists epoch by epoch.

    Returns ``losses_identical`` (same epochs, every ``train_loss`` equal), ``first_loss_diff``
    (label ``"stage epoch"`` of the first epoch whose train_loss differs, or of the first
    missing / extra / misaligned epoch; None when identical), ``first_any_diff`` (the same,
    also counting ``train_top1``, and ``test_correct`` where both runs evaluated the epoch) and ``max_abs_loss_diff`` over the
    epochs both have.
    """
    first_loss = first_any = None
    max_diff = 0.0
    for i in range(max(len(ref), len(other))):
        if i >= len(ref) or i >= len(other):
            label = _epoch_label(ref[i] if i < len(ref) else other[i])
            first_loss = first_loss or label
            first_any = first_any or label
            break
        a, b = ref[i], other[i]
        if (a.get("stage"), a.get("epoch")) != (b.get("stage"), b.get("epoch")):
            first_loss = first_loss or _epoch_label(a)
            first_any = first_any or _epoch_label(a)
            break
        la, lb = a.get("train_loss"), b.get("train_loss")
        if la != lb:
            first_loss = first_loss or _epoch_label(a)
            if la is not None and lb is not None:
                max_diff = max(max_diff, abs(la - lb))
        ta, tb = a.get("test_correct"), b.get("test_correct")
        tested = ta is not None and tb is not None     # --eval-every may skip an epoch's test
        if la != lb or a.get("train_top1") != b.get("train_top1") or (tested and ta != tb):
            first_any = first_any or _epoch_label(a)
    return {"losses_identical": first_loss is None, "first_loss_diff": first_loss,
            "first_any_diff": first_any, "max_abs_loss_diff": max_diff}


def tensors_digest(tensors: dict) -> str:
    """SHA-256 (hex) of a name -> tensor mapping: names in sorted order, each with its dtype,
    shape and raw bytes. Equal digests: bit-identical tensors."""
    import torch
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def max_abs_diff(a: dict, b: dict) -> float | None:
    """Largest absolute difference over the float tensors two mappings share (None when their
    names or shapes differ)."""
    if set(a) != set(b):
        return None
    worst = 0.0
    for k in a:
        x, y = a[k], b[k]
        if tuple(x.shape) != tuple(y.shape):
            return None
        if x.is_floating_point() and x.numel():
            worst = max(worst, float((x.double() - y.double()).abs().max()))
        elif not x.is_floating_point() and not bool((x == y).all()):
            worst = max(worst, float("inf"))
    return worst


def _model_tensors(path: Path) -> dict | None:
    import torch
    if not path.is_file():
        return None
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return dict(ck["model"])


# ------------------------------------------------------------------------------------------
# decoded images

def _split_digest(path: Path) -> dict | None:
    """Digest of a cache file's images, labels and file names."""
    import torch
    if not path.is_file():
        return None
    d = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    h.update(d["images"].contiguous().numpy().tobytes())
    h.update(d["labels"].contiguous().numpy().tobytes())
    h.update("\n".join(d["files"]).encode())
    return {"file": str(path), "sha256": h.hexdigest(), "images": int(d["images"].shape[0]),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                     time.localtime(path.stat().st_mtime))}


def _image_diff(a: Path, b: Path) -> dict:
    import torch
    x = torch.load(a, map_location="cpu", weights_only=True)["images"]
    y = torch.load(b, map_location="cpu", weights_only=True)["images"]
    if x.shape != y.shape:
        return {"shapes": [list(x.shape), list(y.shape)]}
    d = (x.short() - y.short()).abs()
    return {"images_differing": int((d.flatten(1).amax(1) > 0).sum()),
            "max_abs_pixel_diff": int(d.max()) if d.numel() else 0}


def data_report(opts) -> dict:
    """The cache files the default-cache variants read and the fresh decode of
    t2-freshcache, compared split by split."""
    from kep_train.data import cifar as kdata
    fresh_dir = (Path(opts.runs) / FRESH_CACHE).resolve()
    rep = {"default_cache_dir": str(kdata.cache_dir()), "fresh_cache_dir": str(fresh_dir)}
    for split, train in (("train", True), ("test", False)):
        try:
            default = kdata.cache_file(opts.data_dir, train)
        except KepError as e:        # not an image-folder layout: nothing is cached
            rep[split] = {"note": str(e)}
            continue
        fresh = fresh_dir / default.name
        a, b = _split_digest(default), _split_digest(fresh)
        entry = {"default_cache": a, "fresh_decode": b}
        if a and b:
            entry["identical"] = a["sha256"] == b["sha256"]
            if not entry["identical"]:
                entry.update(_image_diff(default, fresh))
        rep[split] = entry
    return rep


# ------------------------------------------------------------------------------------------
# step-level probe

def probe_main(opts) -> int:
    """One forward + backward of a seeded ResNet-20 on a fixed random batch; writes the
    output, the loss and the gradients to ``opts.out`` (safetensors)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from kep_train.models import build_model
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    torch.manual_seed(opts.seed)
    model = build_model("resnet20", 10)
    g = torch.Generator().manual_seed(opts.seed + 1)
    x = torch.randn(opts.batch_size, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (opts.batch_size,), generator=g)
    model.train()
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    tensors = {"output": out.detach(), "loss": loss.detach().reshape(1)}
    tensors.update({f"grad.{n}": p.grad.detach() for n, p in model.named_parameters()})
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, opts.out,
              metadata={"threads": str(torch.get_num_threads()),
                        "mkldnn": str(torch.backends.mkldnn.enabled),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability()})
    return 0


def run_probes(opts, log) -> list[dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file
    folder = Path(opts.runs) / PROBE_DIR
    rows, ref = [], None
    for name, threads, mkldnn, env in PROBES:
        path = folder / f"{name}.safetensors"
        cmd = [sys.executable, str(Path(__file__).resolve()), "probe", "--threads",
               str(threads), "--seed", str(opts.seed), "--out", str(path)]
        if not mkldnn:
            cmd.append("--no-mkldnn")
        if not path.is_file():
            log(f"probe {name}: {' '.join(f'{k}={x}' for k, x in env.items())} "
                f"{shlex.join(cmd)}".strip())
            subprocess.run(cmd, env={**os.environ, **env}, check=True)
        t = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        grads = {k: v for k, v in t.items() if k.startswith("grad.")}
        row = {"probe": name, "threads": threads, "mkldnn": mkldnn, "env": env,
               "cpu_capability": meta.get("cpu_capability"),
               "loss": float(t["loss"][0]), "loss_hex": float(t["loss"][0]).hex()}
        if ref is None:
            ref = (t, grads)
        else:
            rt, rg = ref
            row["output_identical"] = bool(torch_equal(t["output"], rt["output"]))
            row["loss_identical"] = bool(torch_equal(t["loss"], rt["loss"]))
            row["grads_identical"] = tensors_digest(grads) == tensors_digest(rg)
            row["grads_differing"] = sum(not torch_equal(grads[k], rg[k]) for k in grads)
            row["grads_total"] = len(grads)
            row["output_max_abs_diff"] = max_abs_diff({"o": t["output"]}, {"o": rt["output"]})
            row["grad_max_abs_diff"] = max_abs_diff(grads, rg)
        rows.append(row)
    return rows


def torch_equal(a, b) -> bool:
    import torch
    return a.shape == b.shape and bool(torch.equal(a, b))


# ------------------------------------------------------------------------------------------
# the study

def environment(opts) -> dict:
    from kep_common.fileio import environment_info
    import importlib.metadata as md
    import torch
    info = environment_info()
    for pkg in ("pillow", "pillow-simd"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        from PIL import features
        info["libjpeg"] = features.version("jpg")
    except Exception:  # old Pillow
        pass
    info["mkldnn"] = torch.backends.mkldnn.is_available()
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["default_torch_threads"] = torch.get_num_threads()
    info["torch_config"] = [ln.strip() for ln in torch.__config__.show().splitlines()
                            if "MKL" in ln or "OpenMP" in ln or "CPU capability" in ln]
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
        info["cpu_flags"] = sorted(x for x in flags if x.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    info["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "KEP_CACHE",
                                              "XDG_CACHE_HOME", "ATEN_CPU_CAPABILITY",
                                              "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    info["loadavg"] = _loadavg()
    return info


def _load_report(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return None


def compare_variants(opts, names, records) -> list[dict]:
    runs = Path(opts.runs)
    ref_rep = _load_report(runs / REFERENCE)
    ref_final = _model_tensors(runs / REFERENCE / "checkpoint.pt")
    ref_dense = _model_tensors(runs / REFERENCE / "dense.pt")
    rows = []
    for name in names:
        v, rep = BY_NAME[name], _load_report(runs / name)
        row = {"variant": name, "what": v.what, **records.get(name, {})}
        if rep is None:
            row["finished"] = False
            rows.append(row)
            continue
        final = _model_tensors(runs / name / "checkpoint.pt")
        dense = _model_tensors(runs / name / "dense.pt")
        row.update({
            "finished": True, "threads_used": rep["environment"].get("torch_threads"),
            "dense_top1": rep["top1"].get("dense"), "final_top1": rep["top1"].get("pruned"),
            "train_losses": [h.get("train_loss") for h in rep["history"]],
            "test_correct": [h.get("test_correct") for h in rep["history"]],
            "seconds": rep.get("seconds", {}).get("total"),
            "dense_weights_sha256": tensors_digest(dense) if dense else None,
            "final_weights_sha256": tensors_digest(final) if final else None,
        })
        if ref_rep is not None:
            row.update(compare_histories(ref_rep["history"], rep["history"]))
            row["dense_weights_equal"] = (row["dense_weights_sha256"]
                                          == tensors_digest(ref_dense)) if ref_dense else None
            row["final_weights_equal"] = (row["final_weights_sha256"]
                                          == tensors_digest(ref_final)) if ref_final else None
            row["final_weights_max_abs_diff"] = (max_abs_diff(final, ref_final)
                                                 if final and ref_final else None)
        rows.append(row)
    return rows


def _yn(x) -> str:
    return "-" if x is None else ("yes" if x else "no")


def markdown(rows, probes, data) -> str:
    lines = ["| variant | setting | losses identical | first epoch parting (loss / any) | "
             "max abs loss diff | dense top-1 | final top-1 | dense weights = ref | "
             "final weights = ref | final weights max abs diff | run s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.get("finished"):
            lines.append(f"| {r['variant']} | {r['what']} | not finished (exit code "
                         f"{r.get('rc')}) | | | | | | | | |")
            continue
        part = f"{r.get('first_loss_diff') or '-'} / {r.get('first_any_diff') or '-'}"
        mad = r.get("final_weights_max_abs_diff")
        lines.append(
            f"| {r['variant']} | {r['what']} | {_yn(r.get('losses_identical'))} | {part} | "
            f"{r.get('max_abs_loss_diff', 0):.5f} | {r['dense_top1']} | {r['final_top1']} | "
            f"{_yn(r.get('dense_weights_equal'))} | {_yn(r.get('final_weights_equal'))} | "
            f"{'-' if mad is None else f'{mad:.3g}'} | {r.get('wall_s', r.get('seconds'))} |")
    if probes:
        lines += ["", "Step-level probe (one forward + backward, compared with 2 threads):", "",
                  "| probe | output identical | loss identical | gradients identical | "
                  "output max abs diff | gradient max abs diff |", "|---|---|---|---|---|---|"]
        for p in probes[1:]:
            lines.append(f"| {p['probe']} | {_yn(p['output_identical'])} | "
                         f"{_yn(p['loss_identical'])} | {_yn(p['grads_identical'])} "
                         f"({p['grads_total'] - p['grads_differing']}/{p['grads_total']}) | "
                         f"{p['output_max_abs_diff']:.3g} | {p['grad_max_abs_diff']:.3g} |")
    for split in ("train", "test"):
        e = data.get(split) or {}
        if "identical" in e:
            extra = ("" if e["identical"] else f" ({e['images_differing']} images differ, "
                     f"max pixel diff {e['max_abs_pixel_diff']})")
            lines.append(f"\nDecoded {split} images, default cache vs fresh decode: "
                         f"{'identical' if e['identical'] else 'DIFFERENT'}{extra}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/repeatability.py",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    p.add_argument("--data-dir", default="../shared/data/cifar10",
                   help="CIFAR-10 folder (default: %(default)s)")
    p.add_argument("--runs", default="runs/repeat",
                   help="folder of the variants' runs (default: %(default)s)")
    p.add_argument("--out", default=str(RESULTS / "repeatability.json"),
                   help="JSON report (default: benchmarks/results/repeatability.json)")
    p.add_argument("--variants", default=",".join(BY_NAME),
                   help=f"comma-separated variants, in order (default: all: "
                        f"{','.join(BY_NAME)}); {REFERENCE} is always added")
    p.add_argument("--seed", type=int, default=0, help="--seed of every run (default 0)")
    p.add_argument("--subset", type=int, default=2048,
                   help="training images of every run (default %(default)s)")
    p.add_argument("--test-subset", type=int, default=1000,
                   help="test images of every run (default %(default)s)")
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs of each stage: dense, reg, finetune (default %(default)s)")
    p.add_argument("--no-probe", action="store_true", help="skip the step-level probe")
    p.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    return p


def probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/repeatability.py probe",
                                description=probe_main.__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--no-mkldnn", action="store_true", help="torch.backends.mkldnn off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True, help=".safetensors output")
    return p


def _variant_names(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise KepError(f"--variants: unknown {', '.join(unknown)}; choose from "
                       f"{', '.join(BY_NAME)}")
    return [REFERENCE] + [n for n in dict.fromkeys(names) if n != REFERENCE]


@cli_errors
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["probe"]:
        return probe_main(probe_parser().parse_args(argv[1:]))
    opts = parser().parse_args(argv)
    for k in ("subset", "test_subset", "epochs"):
        if getattr(opts, k) < 1:
            raise KepError(f"--{k.replace('_', '-')} must be >= 1")
    names = _variant_names(opts.variants)
    runs = Path(opts.runs)
    if opts.dry_run:
        for n in names:
            v = BY_NAME[n]
            env = " ".join(f"{k}={x}" for k, x in run_env(v, runs).items())
            done = " (done: skipped)" if (runs / n / "report.json").is_file() else ""
            print(f"# {n}: {v.what}{done}\n{env + ' ' if env else ''}"
                  f"{shlex.join(run_command(v, opts, runs / n))}")
        return 0
    runs.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    log = lambda msg: print(f"[{time.time() - t_start:6.0f} s] {msg}", file=sys.stderr,  # noqa
                            flush=True)
    records = {}
    for n in names:
        records[n] = run_variant(BY_NAME[n], opts, log)
    probes = [] if opts.no_probe else run_probes(opts, log)
    data = data_report(opts)
    rows = compare_variants(opts, names, records)
    report = {
        "command": "python benchmarks/repeatability.py " + shlex.join(argv),
        "params": {"data_dir": str(opts.data_dir), "runs": str(opts.runs), "seed": opts.seed,
                   "subset": opts.subset, "test_subset": opts.test_subset,
                   "epochs_per_stage": opts.epochs, "reference": REFERENCE},
        "variants": rows, "probe": probes, "decoded_images": data,
        "environment": environment(opts),
        "seconds": round(time.time() - t_start, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(opts.out, report)
    print(markdown(rows, probes, data))
    print(f"-> {opts.out}", file=sys.stderr)
    return 0 if all(r.get("finished") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
