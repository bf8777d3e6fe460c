"""`facelab experiment claims [--only NAME ...] [--quick]`: measure the claims of CLAIMS and write
docs/claims.md (facelab.experiments.claims.report).

Runs go to `--out/<claim>/...` and are reused when complete and trained with the same config (a
second call only measures; a finished run of another budget is refused, naming the key); each
claim's result is saved beside its runs, so `--only` rewrites one section and keeps the others.
`--quick` is the smoke test of `make test`: tiny data, 3 steps, one seed, everything (the report
included) in a temporary folder.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import shlex
import tempfile
import time
import types
from pathlib import Path

from facelab.errors import FacelabError
from facelab.experiments.claims import CLAIMS
from facelab.experiments.claims.base import Context, Result
from facelab.experiments.claims.report import load_results, save_result, write_claims

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", nargs="+", default=None, metavar="CLAIM",
                   help=f"measure these claims only (of: {', '.join(CLAIMS) or 'none yet'})")
    p.add_argument("--quick", action="store_true",
                   help="tiny data, 3 steps, one seed, in a temporary folder (smoke test)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies every training budget (e.g. 10 on a GPU); give it its own "
                        "--out: a finished run of another budget is refused, not reused")
    p.add_argument("--device", default="cpu", help="train.device of every run")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--out", type=Path, default=Path("runs/claims"))
    p.add_argument("--data", type=Path, default=Path("data/claims"))
    p.add_argument("--doc", type=Path, default=Path("docs/claims.md"))
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the page from the saved results, measuring nothing")


def run(args: argparse.Namespace) -> int:
    names = _chosen(args.only)
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="facelab-claims-") as tmp:
            root = Path(tmp)
            quick = argparse.Namespace(**{**vars(args), "out": root / "runs",
                                          "data": root / "data", "doc": root / "claims.md",
                                          "seeds": [0]})
            return _measure(quick, names)
    return _measure(args, names)


def _chosen(only: list[str] | None) -> list[str]:
    if only is None:
        return list(CLAIMS)
    unknown = [n for n in only if n not in CLAIMS]
    if unknown:
        raise FacelabError(f"experiment claims: unknown claim {unknown[0]!r}; valid: "
                           f"{', '.join(CLAIMS)}")
    return only


def _measure(args: argparse.Namespace, names: list[str]) -> int:
    if args.scale <= 0 or args.threads < 1 or not args.seeds:
        raise FacelabError("experiment claims: needs --scale > 0, --threads >= 1 and a seed")
    ctx = Context(root=args.out, data=args.data, figures=args.doc.parent / "claims",
                  quick=args.quick, seeds=tuple(args.seeds), scale=args.scale,
                  overrides=(f"train.device={args.device}", f"train.threads={args.threads}"))
    start = time.perf_counter()
    for name in [] if args.report_only else names:
        log.info("claim %s", name)
        before, tick = _finished_runs(args.out), time.perf_counter()
        result = _module(name).measure(ctx)
        result.seconds = time.perf_counter() - tick
        result.trained = len(_finished_runs(args.out) - before)
        _keep_training_time(result, load_results(args.out, [name]).get(name))
        save_result(args.out, result)
    results = load_results(args.out, list(CLAIMS))
    bench = sum(r.seconds for r in results.values())
    write_claims(args.doc, results, list(CLAIMS),
                 _header(args, time.perf_counter() - start, bench))
    log.info("experiment claims: %s", args.doc)
    return 0


def _finished_runs(root: Path) -> set[Path]:
    """The finished runs (folders holding metrics.json) under `root`."""
    return {p.parent for p in root.rglob("metrics.json")} if root.exists() else set()


def _keep_training_time(result: Result, previous: Result | None) -> None:
    """A claim re-measured from runs it trained earlier keeps the wall time (and run count) of the
    call that trained them: the time of a call that trained nothing says nothing of the bench's."""
    if result.trained == 0 and previous is not None and previous.trained > 0:
        result.seconds, result.trained = previous.seconds, previous.trained


def _module(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(CLAIMS[name].module)
    except ModuleNotFoundError as e:
        raise FacelabError(f"claim {name} needs the package {e.name!r}: "
                           "pip install 'facelab[experiments]'") from None


def _header(args: argparse.Namespace, seconds: float, bench: float) -> str:
    """The page's opening: what it is, the command that wrote it, the machine, and the bench's
    wall time (`bench`: the sum of the sections' times, each from the call that trained it)."""
    intro = ("Each claim of a paper measured on facelab's synthetic faces (whose generator knows "
             "every nuisance: pose, resolution, light, blur, identity overlap, label noise) by its "
             "mechanism and by its outcome, with a decision rule fixed before running. ")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    total = (f"The bench's wall time: {bench / 60:.1f} min, the sum of the sections' below "
             "(each from the call that trained its runs and measured them).")
    if args.report_only:
        return (intro + "Each section was measured by `facelab experiment claims --only NAME` "
                f"and gives that call's wall time; this page was assembled on {machine} by:\n\n"
                f"```\nfacelab experiment claims --report-only\n```\n\n{total}")
    flags = ["--quick"] if args.quick else [
        *(["--only", *args.only] if args.only else []), "--seeds", *map(str, args.seeds),
        "--scale", f"{args.scale:g}", "--device", args.device, "--threads", str(args.threads)]
    command = "facelab experiment claims " + " ".join(shlex.quote(f) for f in flags)
    return (intro + f"Produced by:\n\n```\n{command}\n```\n\non {machine} ({seconds / 60:.1f} "
            f"min for that call; finished runs are reused, not retrained). {total}")
