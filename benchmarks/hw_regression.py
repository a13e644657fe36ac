# SPDX-License-Identifier: Apache-2.0
"""Random-layer regression of the engine's Verilog (cocotb) against the golden model.

``python benchmarks/hw_regression.py --layers 200 --sim verilator icarus``
``--out runs/hw_regression.json``

Random shapes, strides, kernel sizes, K (0..k*k), ReLU/residual, dense mode and extreme
values, with random ``ready`` back-pressure; every output compared bit for bit. Every layer
also draws the split of the P PEs over output pixels, Px from ``--px-choices`` (default 1 2 4;
those with ``P % Px == 0`` and ``(P/Px) % G == 0``); the layers of each Px run on that engine,
``--chunk`` layers per simulation. Writes a JSON report with versions and machine.

Long soaks, resumable: ``python benchmarks/hw_regression.py --layers 2000 --out
runs/hw_regression_soak.json --resume [--max-minutes 60]`` (``benchmarks/results_table.py``
lists the reports named ``hw_regression*.json``). The rows of every finished chunk are saved
atomically in the state file beside ``--out`` (here ``runs/hw_regression_soak.state.json``),
keyed by the settings (seed, layers, chunk, stall, engine parameters, Px choices, simulators
and the hash of each engine's generated Verilog). With ``--resume`` a killed or stopped run
continues where it stopped: its finished chunks are skipped and the final report is the one an
uninterrupted run writes (except the timings); without a state file ``--resume`` starts from
the first chunk, so the same command serves every slice of a soak. A state file of other
settings is refused (choose another ``--out``); without ``--resume`` an existing state file is
refused too, so that no finished work is overwritten by mistake (delete the file to start
over). ``--max-minutes M`` stops after the chunk that crosses M minutes (exit code 0) and
prints the command that continues. One progress line per chunk.
The state file is removed once the report is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

from kep_hw.bench import cosim
from kep_hw.gateware.params import EngineParams
from kep_hw.gateware.verilog import add_params_args, generate, params_from_args
from kep_hw.testing import random_layers
from kep_common.errors import KepError, cli_errors
from kep_common.fileio import atomic_write_json, check_output_file, environment_info

#: ``kind`` and ``version`` of the state file
STATE_KIND = "kep hw_regression state"
STATE_VERSION = 1


@dataclasses.dataclass
class Chunk:
    """One simulation: ``jobs`` on the engine of Px ``px`` with simulator ``sim``."""
    key: str
    sim: str
    px: int
    engine: EngineParams
    jobs: list
    seed: int


def state_path(out: str | os.PathLike) -> Path:
    """The state file of the report ``out``: ``runs/soak.json`` -> ``runs/soak.state.json``."""
    out = Path(out)
    stem = out.stem if out.suffix == ".json" else out.name
    return out.with_name(f"{stem}.state.json")


def verilog_digests(engines: dict) -> dict[str, str]:
    """Per Px, the first 16 hex digits of the SHA-256 of the engine's generated Verilog (the
    name of its ``sim_build`` folder)."""
    return {str(px): hashlib.sha256(generate(eng).encode()).hexdigest()[:16]
            for px, eng in engines.items()}


def _setting_items(settings: dict):
    """``(option, value)`` pairs of ``settings``, named as on the command line."""
    for key, value in settings.items():
        if key == "params":
            for field, v in value.items():
                yield f"--{field.replace('_', '-')}", v
        elif key == "verilog":
            for px, digest in value.items():
                yield f"the generated Verilog of Px {px}", digest
        else:
            yield {"px_choices": "--px-choices", "simulators": "--sim"}.get(
                key, f"--{key}"), value


def _setting_diffs(old: dict, new: dict) -> list[str]:
    old_items = dict(_setting_items(old))
    diffs = []
    for name, value in _setting_items(new):
        if name not in old_items:
            diffs.append(f"{name} missing there")
        elif old_items[name] != value:
            if name.startswith("the generated Verilog"):
                diffs.append(f"{name} changed")
            else:
                diffs.append(f"{name} {json.dumps(old_items[name])} there, "
                             f"{json.dumps(value)} here")
    return diffs


def load_state(path: Path, settings: dict, plan: list[Chunk]) -> dict:
    """The finished chunks (``key -> {"rows", "seconds"}``) saved in ``path``, ``{}`` when it
    does not exist.

    Raises
    ------
    KepError
        The file cannot be read, is corrupt, or was written with other settings.
    """
    def corrupt(why: str) -> KepError:
        return KepError(f"state file {str(path)!r} is corrupt ({why}); delete it to start over")

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise KepError(f"cannot read state file {str(path)!r}: {e.strerror}") from None
    try:
        state = json.loads(raw.decode())
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError
        raise corrupt(f"not JSON: {e}") from None
    if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
        raise corrupt("not a hw_regression state file")
    if state.get("version") != STATE_VERSION:
        raise KepError(f"state file {str(path)!r} has version {state.get('version')!r}, this "
                       f"script writes {STATE_VERSION}: choose another --out")
    if not isinstance(state.get("settings"), dict) or not isinstance(state.get("chunks"), dict):
        raise corrupt("no settings or chunks")
    diffs = _setting_diffs(state["settings"], settings)
    if diffs:
        raise KepError(f"state file {str(path)!r} belongs to a run with other settings "
                       f"({'; '.join(diffs)}): choose another --out for these settings")
    by_key = {c.key: c for c in plan}
    done = {}
    for key, entry in state["chunks"].items():
        c = by_key.get(key)
        if c is None:
            raise corrupt(f"unknown chunk {key!r}")
        if not (isinstance(entry, dict) and isinstance(entry.get("rows"), list)
                and isinstance(entry.get("seconds"), (int, float))):
            raise corrupt(f"chunk {key!r} has no rows or seconds")
        rows = entry["rows"]
        if [r.get("name") if isinstance(r, dict) else None for r in rows] != \
                [j.name for j in c.jobs]:
            raise corrupt(f"the rows of chunk {key!r} are not its layers")
        for r in rows:
            if not (r.get("px") == c.px and isinstance(r.get("exact"), bool)
                    and all(isinstance(r.get(k), int) and not isinstance(r.get(k), bool)
                            for k in ("outputs", "mismatches"))):
                raise corrupt(f"row {r['name']!r} of chunk {key!r} lacks px, exact, outputs "
                              "or mismatches")
        done[key] = entry
    return done


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _continue_command(argv: list[str]) -> str:
    args = list(argv) + ([] if "--resume" in argv else ["--resume"])
    return shlex.join(["python", os.path.relpath(__file__), *args])


@cli_errors
def main(argv=None) -> int:
    t0 = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=50, help="layers per simulation")
    ap.add_argument("--sim", nargs="+", default=["verilator"], choices=list(cosim.SIMULATORS))
    ap.add_argument("--stall", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/hw_regression.json",
                    help="the report; finished chunks are saved in OUT's .state.json beside it")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run saved in the state file of --out (its finished "
                         "chunks are skipped); without one, start from the first chunk")
    ap.add_argument("--max-minutes", type=float, default=None, metavar="M",
                    help="stop (exit code 0, state saved) after the chunk that crosses M "
                         "minutes; --resume continues")
    ap.add_argument("--px-choices", type=int, nargs="+", default=[1, 2, 4], metavar="PX",
                    help="Px values drawn per layer (those that split P evenly)")
    ap.add_argument("--layer-hw", type=int, default=7, metavar="N",
                    help="largest input height and width of the random layers (default 7; "
                         "at most the engine's --max-hw). Wider maps give rows of several "
                         "blocks at Px = 8, where the window fetcher reuses columns")
    add_params_args(ap)
    args = ap.parse_args(argv)
    if args.layers < 1 or args.chunk < 1:
        raise KepError("--layers and --chunk must be >= 1")
    if args.layer_hw < 1:
        raise KepError(f"--layer-hw must be >= 1, got {args.layer_hw}")
    if not (math.isfinite(args.stall) and 0.0 <= args.stall < 1.0):
        raise KepError(f"--stall must lie in [0, 1), got {args.stall!r}")
    if args.max_minutes is not None and not (args.max_minutes >= 0):
        raise KepError(f"--max-minutes must be >= 0, got {args.max_minutes!r}")
    out = check_output_file(args.out, "--out")
    state_file = check_output_file(state_path(out), "state file")
    if state_file.exists() and not args.resume:
        raise KepError(f"{str(state_file)!r} holds the finished chunks of an earlier run of "
                       "--out: add --resume to continue it, or delete it to start over")
    params = params_from_args(args)
    engines = {}
    for px in sorted(set(args.px_choices)):
        if px >= 1 and params.pes % px == 0 and (params.pes // px) % params.lanes == 0:
            try:
                engines[px] = dataclasses.replace(params, px=px)
            except ValueError as e:
                raise KepError(f"--px-choices {px}: {e}") from None
    if not engines:
        raise KepError(f"no Px of {args.px_choices} splits P={params.pes} into multiples "
                       f"of G={params.lanes}")
    sims = list(dict.fromkeys(args.sim))
    settings = {"seed": args.seed, "layers": args.layers, "chunk": args.chunk,
                "stall": args.stall, "params": dataclasses.asdict(params),
                **({"layer_hw": args.layer_hw} if args.layer_hw != 7 else {}),
                "px_choices": sorted(engines), "simulators": sims,
                "verilog": verilog_digests(engines)}

    jobs = random_layers(args.seed, args.layers, params, max_hw=args.layer_hw)
    rng = random.Random(args.seed)
    pxs = [rng.choice(sorted(engines)) for _ in jobs]
    plan = []
    for sim in sims:
        for px, eng in engines.items():
            mine = [j for j, x in zip(jobs, pxs) if x == px]
            for start in range(0, len(mine), args.chunk):
                plan.append(Chunk(f"{sim} px{px} {start}", sim, px, eng,
                                  mine[start:start + args.chunk],
                                  args.seed + 1000 * px + start))
    done = load_state(state_file, settings, plan) if args.resume else {}

    total = args.layers * len(sims)
    n_done = sum(len(c.jobs) for c in plan if c.key in done)

    def not_exact():
        rows = [r for e in done.values() for r in e["rows"]]
        return sum(not r["exact"] for r in rows), sum(r["mismatches"] for r in rows)

    if done:
        bad, mism = not_exact()
        print(f"resuming {state_file}: {len(done)} of {len(plan)} chunks ({n_done} of {total} "
              f"layers) already done, skipped; {bad} not bit-exact so far", flush=True)
    elif args.resume:
        print(f"no finished chunks in {state_file}: starting from the first chunk", flush=True)

    n_run = 0
    for i, c in enumerate(plan, 1):
        if c.key in done:
            continue
        t = time.monotonic()
        try:
            part = cosim.run_layers(c.engine, c.jobs, sim=c.sim, stall=args.stall, seed=c.seed)
        except KeyboardInterrupt:
            print(f"{len(done)} of {len(plan)} chunks saved in {state_file}; continue with: "
                  f"{_continue_command(argv)}", file=sys.stderr, flush=True)
            raise
        except KepError as e:
            raise KepError(f"{e} ({len(done)} of {len(plan)} chunks saved in {state_file}: "
                           "--resume continues)") from None
        done[c.key] = {"rows": [dict(r, px=c.px) for r in part],
                       "seconds": round(time.monotonic() - t, 3)}
        atomic_write_json(state_file, {"kind": STATE_KIND, "version": STATE_VERSION,
                                       "settings": settings,
                                       "chunks": {k.key: done[k.key] for k in plan
                                                  if k.key in done}})
        n_done += len(c.jobs)
        n_run += len(c.jobs)
        elapsed = time.monotonic() - t0
        bad, mism = not_exact()
        print(f"chunk {i}/{len(plan)} ({c.sim}, Px {c.px}, {len(c.jobs)} layers): {n_done}/"
              f"{total} layers done, {bad} not bit-exact ({mism} mismatching outputs) so far, "
              f"elapsed {_hms(elapsed)}, ETA {_hms(elapsed / n_run * (total - n_done))}",
              flush=True)
        if (args.max_minutes is not None and elapsed >= 60 * args.max_minutes
                and len(done) < len(plan)):
            print(f"stopped after {_hms(elapsed)} (--max-minutes {args.max_minutes:g}): "
                  f"{len(done)} of {len(plan)} chunks saved in {state_file}; continue with: "
                  f"{_continue_command(argv)}", flush=True)
            return 0

    report = {"environment": environment_info(), "params": dataclasses.asdict(params),
              "px_choices": sorted(engines), "seed": args.seed, "stall": args.stall,
              "layers": args.layers, "layer_hw": args.layer_hw, "chunk": args.chunk,
              "verilog": settings["verilog"], "simulators": {}}
    total_bad = 0
    for sim in sims:
        mine = [c for c in plan if c.sim == sim]
        rows = [r for c in mine for r in done[c.key]["rows"]]
        bad = [r["name"] for r in rows if not r["exact"]]
        total_bad += len(bad)
        report["simulators"][sim] = {
            "layers": len(rows), "not_exact": len(bad), "failed_layers": bad,
            "outputs": sum(r["outputs"] for r in rows),
            "layers_per_px": {str(px): sum(r["px"] == px for r in rows) for px in engines},
            "mismatches": sum(r["mismatches"] for r in rows),
            "seconds": round(sum(done[c.key]["seconds"] for c in mine), 1), "rows": rows,
        }
        print(f"{sim}: {len(rows)} layers (Px: {report['simulators'][sim]['layers_per_px']}), "
              f"{len(bad)} not bit-exact, "
              f"{report['simulators'][sim]['outputs']} output transfers, "
              f"{report['simulators'][sim]['seconds']} s")
    atomic_write_json(out, report)
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()
    print(f"wrote {out}")
    return 1 if total_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
