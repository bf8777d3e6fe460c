"""`facelab` command line: one sub-command per job. Bad input -> one line on stderr, exit 2."""

import argparse
import logging
import os
import sys
import typing
from pathlib import Path

from facelab import CONFIGS
from facelab.errors import FacelabError
from facelab.experiments import EXPERIMENTS, load_experiment

log = logging.getLogger("facelab")
_MODEL_HELP = "a checkpoint file, a run folder or an exported .onnx model (facelab export)"

# Each handler imports its module when it runs: building the parser (and `facelab --help`) imports
# none of the data, training or evaluation code.


def _cmd_synth(a: argparse.Namespace) -> int:
    from facelab.data.synthetic import run_synth

    # DAIL test bed: several datasets from one identity pool (facelab.data.synthetic.multi)
    if a.datasets > 1:
        if a.label_noise:
            raise FacelabError("synth: --label-noise is not implemented together with --datasets")
        from facelab.data.synthetic.multi import run_multi_synth

        summary = run_multi_synth(a.out, a.datasets, a.identities, a.images_per_identity,
                                  a.overlap, a.seed, pairs=a.pairs, workers=a.workers)
        log.info("synthetic datasets in %s: %s", a.out, summary)
        return 0
    summary = run_synth(a.out, a.identities, a.images_per_identity, a.seed, pairs=a.pairs,
                        workers=a.workers, label_noise=a.label_noise)
    log.info("synthetic data in %s: %s", a.out, summary)
    return 0


def _cmd_align(a: argparse.Namespace) -> int:
    from facelab.align.folder import align_folder
    from facelab.io import check_writable

    if a.all_faces and not a.detector:
        raise FacelabError("--all-faces needs --detector (a landmarks file lists the faces of a "
                           "photo in its own `face` column)")
    check_writable(a.out)  # before detection, which writes there first
    found = None
    if a.detector:
        from facelab.align.detect import landmarks_for_folder

        a.landmarks = a.out / "landmarks.csv"
        found = landmarks_for_folder(a.src, a.landmarks, workers=a.workers,
                                     all_faces=a.all_faces)
        found["detector"] = a.detector
        several = found["several"]
        if not several:
            note = "none shows several faces"
        elif a.all_faces:
            note = (f"{several} photo(s) show several faces (--all-faces: wrote all "
                    f"{found['kept']} faces)")
        else:
            note = (f"{several} photo(s) show several faces (kept the main one; --all-faces "
                    "writes them all)")
        log.info("%s: faces found in %d of %d photos; %s", a.detector, found["faces"],
                 found["images"], note)
    summary = align_folder(a.src, a.out, a.landmarks, size=a.size, workers=a.workers,
                           detection=found)
    log.info("aligned %d faces into %s, skipped %d (see skipped.csv)", summary["aligned"], a.out,
             summary["skipped"])
    return 0


def _cmd_convert(a: argparse.Namespace) -> int:
    from facelab.data.convert import convert, summary_line

    summary = convert(a.src, a.dst, fmt=a.to)
    counts = {k: v for k, v in summary.items() if k not in ("damaged", "undecodable")}
    log.info("converted %s -> %s: %s", a.src, a.dst, counts)
    if summary["skipped"]:
        log.warning("%s: %s", a.src, summary_line(summary, a.dst))
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from facelab.train.loop import train

    cfg, resume = _train_config(a.config, list(a.overrides), a.resume)
    summary = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: one table, from rank 0
        _print_results(summary["pairs"])
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from facelab.eval.checks.metadata import describe_pair_sets
    from facelab.eval.run import evaluate_checkpoint, load_pair_sets, output_folder

    if not a.pairs and not a.lfw:
        raise FacelabError("eval: give --pairs FILE.bin ... and/or --lfw PAIRS.txt ALIGNED_DIR")
    out = output_folder(a.checkpoint, a.out, "eval")  # writable, before any data is read
    sets = load_pair_sets(a.pairs or [], a.lfw)
    results = evaluate_checkpoint(
        a.checkpoint, sets, out, batch_size=a.batch_size, flip=not a.no_flip,
        threshold_rule=a.threshold_rule, spread=a.spread,
        data=describe_pair_sets(a.pairs or [], a.lfw), allow_mismatch=a.allow_mismatch,
    )
    _print_results(results)
    return 0


def _cmd_ijb(a: argparse.Namespace) -> int:
    from facelab.eval.protocols.ijb import evaluate_ijb
    from facelab.eval.reports.tables import format_ijb_table
    from facelab.eval.run import output_folder
    from facelab.model import load_model, resolve_checkpoint

    path = resolve_checkpoint(a.checkpoint)
    out = output_folder(path, a.out, "ijb")  # writable, before the model is loaded
    model, preprocess = load_model(path)
    result = evaluate_ijb(
        model, a.root, out=out, dataset=a.dataset, modes=a.modes, batch_size=a.batch_size,
        preprocess=preprocess, workers=a.workers, features=out / "features.npz",
        allow_mismatch=a.allow_mismatch,
    )
    print(format_ijb_table(result))
    return 0


def _cmd_search(a: argparse.Namespace) -> int:
    from facelab.eval.reports.tables import format_identification_table as format_table
    from facelab.eval.run import search_folders
    from facelab.model import resolve_checkpoint

    out = a.out or resolve_checkpoint(a.checkpoint).parent / "search"
    metrics = search_folders(a.checkpoint, a.gallery, a.probes, out, a.index, a.k,
                             allow_mismatch=a.allow_mismatch)
    print(format_table({"search": metrics}))
    return 0


def _cmd_overlap(a: argparse.Namespace) -> int:
    from facelab.eval.run import find_overlap

    s = find_overlap(a.model, a.dataset_a, a.dataset_b, a.out, truth=a.truth,
                     threshold=a.threshold, merge=a.merge, centre=a.centre,
                     truth_datasets=a.truth_datasets)
    print(f"{s['called']} classes of B called shared with A at cosine >= {s['threshold']}")
    for key in ("at_threshold", "best_f1"):
        if key in s:
            r = s[key]
            shown = "none" if r["threshold"] is None else f"{r['threshold']:.6f}"
            print(f"{key}: threshold {shown} precision {r['precision']:.3f} recall "
                  f"{r['recall']:.3f} F1 {r['f1']:.3f}")
    print(f"ranked candidates in {a.out}/candidates.csv")
    return 0


def _recognizer(a: argparse.Namespace) -> object:
    from facelab.recognize import Recognizer

    return Recognizer.load(a.model, precision=a.precision,
                           threshold=getattr(a, "threshold", None),
                           threshold_set=getattr(a, "threshold_set", None))


def _cmd_embed(a: argparse.Namespace) -> int:
    from facelab.recognize.files import check_output, embed_files, photo_paths

    paths = photo_paths(a.photos)  # the input and the output checked before the model loads
    check_output(a.out)
    s = embed_files(_recognizer(a), paths, a.out, batch_size=a.batch_size)
    log.info("%d face(s) from %d photo(s) in %s (index %s); %d without a face, %d with several",
             s["faces"], s["photos"], a.out, a.out.with_suffix(".csv"), s["no_face"], s["several"])
    if s["unreadable"]:  # written and listed, but the run did not see every photo
        first, why = s["unreadable"][0]
        raise FacelabError(f"{len(s['unreadable'])} photo(s) could not be read (listed in "
                           f"{a.out.with_suffix('.csv')}), e.g. {why}")
    return 0


def _cmd_verify(a: argparse.Namespace) -> int:
    from facelab.jsonfile import strict_json

    for photo in (a.a, a.b):
        if not photo.is_file():
            raise FacelabError(f"{photo}: no such photo")
    match = _recognizer(a).compare(a.a, a.b)
    if a.json:
        print(strict_json({"same": match.same, "score": match.score, "distance": match.distance,
                           "threshold": match.threshold, "threshold_set": match.threshold_set},
                          indent=None))
    else:
        print(match)
    return 0 if match.same else 1


def _cmd_gallery(a: argparse.Namespace) -> int:
    from facelab.jsonfile import strict_json
    from facelab.recognize.gallery import Gallery
    from facelab.recognize.identify import enrol, identify

    if a.action in ("add", "identify") and a.model is None:
        raise FacelabError(f"gallery {a.action}: give --model (the model whose embeddings the "
                           "gallery holds)")
    if a.action in ("list", "remove"):
        with Gallery.open(a.gallery, None, create=False) as gallery:
            if a.action == "remove":
                removed = gallery.remove(a.name)
                log.info("removed %s (%d embedding(s)) from %s", a.name, removed, a.gallery)
            else:
                for row in gallery.identities():
                    print(f"{row['name']}\t{row['photos']} photo(s)\tadded {row['added']}")
        return 0
    rec = _recognizer(a)
    with Gallery.open(a.gallery, rec.fingerprint, create=a.action == "add") as gallery:
        if a.action == "add":
            s = enrol(rec, gallery, a.name, a.photos)
            log.info("added %d photo(s) of %s to %s", s["photos"], a.name, a.gallery)
            for where in s["several"]:
                log.warning("%s shows several faces: the main one was added", where)
            return 0
        records = identify(rec, gallery, a.photos, top_k=a.top_k)
    if a.json:
        print(strict_json(records, indent=1))
    else:
        for r in records:
            print(_identified_line(r))
    return 2 if any("error" in r for r in records) else 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from facelab.io import check_output_folder
    from facelab.model import resolve_checkpoint

    try:
        from facelab.serve import Limits, bind, check_port, create_app, serve
    except ModuleNotFoundError as e:  # the optional extra is not installed
        if (e.name or "").partition(".")[0] not in ("fastapi", "starlette", "uvicorn",
                                                    "python_multipart"):
            raise
        raise FacelabError(f"serve: {e.name} is missing; pip install 'facelab[serve]'") from None

    key = a.api_key if a.api_key is not None else os.environ.get("FACELAB_API_KEY")
    if key is not None and not key.strip():
        raise FacelabError("--api-key: empty (or FACELAB_API_KEY); give a key or none")
    limits = Limits(max_upload_mb=a.max_upload_mb, max_batch=a.max_batch,
                    max_wait_ms=a.max_wait_ms)
    check_port(a.port)
    # the cheap checks first, each one line: the gallery folder and the model file, then the
    # port (taken before the model loads, so that a port in use fails at once)
    check_output_folder(a.gallery, "gallery folder")
    resolve_checkpoint(a.model)
    sock = bind(a.host, a.port)
    try:
        app = create_app(_recognizer(a), a.gallery, api_key=key, limits=limits)
        host, port = sock.getsockname()[:2]
        if key is None and host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("serving on %s without --api-key: anyone who reaches it can read and "
                        "change the gallery", host)
        log.info("facelab serve: http://%s:%d (API docs at /docs), gallery %s", host, port,
                 a.gallery)
        serve(app, sock)
    finally:
        sock.close()
    return 0


def _identified_line(r: dict) -> str:
    if "error" in r:
        return f"{r['photo']}: error: {r['error']}"
    if r["face"] is None:
        return f"{r['photo']}: no face found"
    score = "empty gallery" if r["score"] is None else f"cosine {r['score']:.4f}"
    others = ", ".join(f"{n} {c:.3f}" for n, c in r["candidates"][1:])
    return (f"{r['photo']} face {r['face']}: {r['identity']} ({score})"
            + (f"; next: {others}" if others else ""))


def _cmd_import_onnx(a: argparse.Namespace) -> int:
    from facelab.interop.onnx_import import import_onnx, preset

    given = {k: v for k, v in (("template", a.template), ("size", a.size), ("colour", a.colour),
                               ("mean", a.mean), ("std", a.std)) if v is not None}
    if a.preset is None and not given:
        raise FacelabError("import onnx: give --preset NAME or the model's preprocessing "
                           "(--colour, --mean, --std, --size, --template)")
    pre = {**(preset(a.preset) if a.preset else {}), **given}
    for key in ("mean", "std"):  # one number or one per channel
        if key in given and isinstance(pre[key], list) and len(pre[key]) == 1:
            pre[key] = pre[key][0]
    s = import_onnx(a.src, a.out, pre, backbone=a.backbone, layout=a.layout)
    log.info("%s -> %s: input %s %s, batch %s, %d-d embeddings; preprocessing %s", a.src, a.out,
             s["input"], s["input_layout"], s["batch"], s["embedding_size"], s["preprocess"])
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    if a.format == "insightface":
        from facelab.interop.insightface import export_insightface

        if a.opset is not None:
            raise FacelabError("export: --opset is for --format onnx")
        s = export_insightface(a.run, a.out, arch=a.arch)
        log.info("%s -> %s: insightface %s backbone state dict (%d tensors, %d-d)", a.run, a.out,
                 s["arch"], s["tensors"], s["embedding_size"])
        return 0
    from facelab.export import export_onnx

    if a.arch is not None:
        raise FacelabError("export: --arch is for --format insightface")
    # logs the file, its size and the torch vs onnxruntime difference
    export_onnx(a.run, a.out, opset=a.opset)
    return 0


def _cmd_import_dlib(a: argparse.Namespace) -> int:
    from facelab.interop.dlib import import_dlib

    s = import_dlib(a.src, a.out)
    log.info("%s -> %s: dlib's face-recognition ResNet as facelab dlib_resnet (128-d, 150x150 "
             "chips)", s.get("source", a.src), a.out)
    return 0


def _cmd_import_insightface(a: argparse.Namespace) -> int:
    from facelab.interop.insightface import import_insightface

    s = import_insightface(a.src, a.arch, a.out)
    log.info("%s -> %s: insightface %s as facelab %s (%d tensors, %d parameters, %d-d)", a.src,
             s["out"], s["arch"], s["backbone"], s["tensors"], s["parameters"],
             s["embedding_size"])
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from facelab.demo import run_demo

    summary = run_demo(Path(a.out), Path(a.data), quick=a.quick)
    _print_results(summary["pairs"])
    print(f"wall time {summary['wall_seconds']:.0f} s; results in {a.out}/metrics.json and "
          f"{a.out}/roc.png")
    return 0


def _cmd_clean(a: argparse.Namespace) -> int:
    from facelab.clean import clean_folder

    report = clean_folder(a.run, a.data, a.out, angle=a.angle, truth=a.truth,
                          batch_size=a.batch_size)
    counts = report["counts"]
    print(f"kept {counts['kept']} of {counts['images']} images, dropped {counts['dropped']} "
          f"(angle > {a.angle:g} deg to the dominant sub-centre); report in {a.out}/clean.json")
    if report["truth"]:
        t = report["truth"]
        print(f"against {t['file']}: {t['dropped_noisy']} of {t['dropped']} dropped were noisy, "
              f"{t['dropped_noisy']} of {t['noisy']} noisy found (precision {t['precision']}, "
              f"recall {t['recall']})")
    return 0


def _cmd_experiment(a: argparse.Namespace) -> int:
    return a.experiment_module.run(a) or 0


def _train_config(config: str | None, overrides: list[str],
                  resume: str | bool) -> tuple[object, bool]:
    """(Config, resume) of `facelab train`: CONFIG [overrides] [--resume], or --resume RUN_DIR
    [overrides] (the run's own config.yaml). argparse hands a `key=value` after --resume or a bare
    CONFIG slot to the wrong argument: they are put back among the overrides here."""
    from facelab.config import load_config

    # `--resume key=value`: the flag, then an override
    if isinstance(resume, str) and "=" in resume:
        overrides, resume = [resume, *overrides], True
    if not isinstance(resume, str):
        if config is None:
            raise FacelabError("train: give a recipe (a YAML file or a shipped name such as demo), "
                               "or --resume RUN_DIR")
        return load_config(_recipe(config), overrides), bool(resume)
    if config is not None:
        if "=" not in config:
            raise FacelabError(f"train: give a recipe ({config}) or --resume RUN_DIR ({resume}), "
                               "not both")
        overrides = [config, *overrides]
    run = Path(resume)
    if not (run / "config.yaml").is_file():
        raise FacelabError(f"{run}: not a run folder (no config.yaml); --resume RUN_DIR takes the "
                           "folder a facelab train wrote")
    cfg = load_config(run / "config.yaml", overrides)
    cfg.output = str(run)  # the folder as it is named now (it may have been moved)
    return cfg, True


def _recipe(name: str) -> Path:
    """A YAML path, or the name of a recipe shipped in facelab/configs (e.g. `demo`,
    `heads/arcface`)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = CONFIGS / f"{name}.yaml"
    if not shipped.exists():
        raise FacelabError(f"{name}: no such config file or shipped recipe")
    return shipped


def _print_results(results: dict) -> None:
    from facelab.eval.reports.tables import format_table

    if results:
        print(format_table(results))


class _Parser(argparse.ArgumentParser):
    """argparse's mistakes as the one line every other mistake gives (not usage + error)."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"facelab: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class _ExperimentParser(_Parser):
    """The sub-parser of one experiment. Its module (and the training code it imports) is loaded,
    and its arguments added, when this parser first parses, so that building the parser stays
    light."""

    def __init__(self, *args: typing.Any, experiment: str, **kwargs: typing.Any) -> None:
        super().__init__(*args, **kwargs)
        self._experiment = experiment
        self._loaded = False

    def parse_known_args(self, args: typing.Any = None,
                         namespace: typing.Any = None) -> typing.Any:
        if not self._loaded:
            self._loaded = True
            module = load_experiment(self._experiment)
            module.add_arguments(self)
            self.set_defaults(func=_cmd_experiment, experiment_module=module)
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="facelab", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth",
                       help="generate synthetic identities, photos, landmarks and pair sets")
    s.add_argument("out", type=Path)
    s.add_argument("--identities", type=int, default=1000)
    s.add_argument("--images-per-identity", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--pairs", type=int, default=3000,
                   help="pairs per verification set (0: none)")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--label-noise", type=float, default=0.0, metavar="P",
                   help="file this fraction of the training photos under a wrong identity "
                   "(truth: label_noise.csv)")
    s.add_argument("--datasets", type=int, default=1,
                   help="> 1: that many datasets from one identity pool (DAIL)")
    s.add_argument("--overlap", type=float, default=0.3,
                   help="with --datasets: fraction of B's identities in A")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("align", help="5-point similarity alignment of a folder of photos")
    s.add_argument("src", type=Path)
    s.add_argument("out", type=Path)
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--landmarks", type=Path,
                       help="CSV: image,x1,y1,...,x5,y5 (image paths relative to SRC)")
    where.add_argument("--detector", choices=["mtcnn"],
                       help="detect faces and 5 landmarks (make setup-detector)")
    s.add_argument("--all-faces", action="store_true",
                   help="with --detector: write every face, the main one as the photo's name, "
                   "the others as NAME_face1.EXT, NAME_face2.EXT, ...")
    s.add_argument("--size", type=int, default=112)
    s.add_argument("--workers", type=int, default=None)
    s.set_defaults(func=_cmd_align)

    s = sub.add_parser("convert", help="convert between image folders, RecordIO and file lists "
                       "(bytes kept)")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.add_argument("--to", default=None, help="folder | rec | list (default: from DST's name)")
    s.set_defaults(func=_cmd_convert)

    s = sub.add_parser("train", help="train from a YAML recipe")
    s.add_argument("config", nargs="?", help="a YAML file or a shipped recipe name (demo)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.05")
    s.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue a run: RUN_DIR resumes from the folder's own config.yaml "
                   "(overrides optional: steps, intervals, validation sets, workers, threads, "
                   "progress); without RUN_DIR, the recipe's output folder")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("eval",
                       help="pair verification of a checkpoint or exported model on .bin sets")
    s.add_argument("checkpoint", help=_MODEL_HELP)
    s.add_argument("--pairs", nargs="+", type=Path, default=[],
                   help=".bin pair sets (insightface format)")
    s.add_argument("--lfw", nargs=2, type=Path, metavar=("PAIRS_TXT", "ALIGNED_DIR"),
                   help="LFW pairs.txt protocol")
    s.add_argument("--threshold-rule", choices=["insightface", "exact"], default="insightface",
                   help="insightface: grid 0..3.99 step 0.01 (published numbers); exact: "
                   "midpoints of the distances")
    s.add_argument("--spread", choices=["std", "sem"], default="std",
                   help="fold spread: std (ddof 0) or std error")
    s.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/eval)")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--no-flip", action="store_true",
                   help="do not add the flipped image's embedding")
    _add_allow_mismatch(s)
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("ijb", help="IJB-B/IJB-C 1:1 verification and 1:N identification of a "
                       "checkpoint or exported model")
    s.add_argument("checkpoint", help=_MODEL_HELP)
    s.add_argument("root", type=Path, help="folder holding meta/ and loose_crop/")
    s.add_argument("--dataset", choices=["IJBB", "IJBC"], default=None,
                   help="default: from the meta file names")
    s.add_argument("--modes", nargs="+", default=["N0D1F1"],
                   help="N/D/F modes, e.g. N0D1F1 N1D0F0")
    s.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/ijb)")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--workers", type=int, default=2, help="decode/align processes")
    _add_allow_mismatch(s)
    s.set_defaults(func=_cmd_ijb)

    s = sub.add_parser("search",
                       help="1:N search of probe images against a gallery (FAISS index)")
    s.add_argument("checkpoint", help=_MODEL_HELP)
    s.add_argument("--gallery", type=Path, required=True,
                   help="aligned images, one sub-folder per identity")
    s.add_argument("--probes", type=Path, required=True,
                   help="aligned images, one sub-folder per identity")
    s.add_argument("--index", choices=["exact", "ivf"], default="exact")
    s.add_argument("--k", type=int, default=10, help="candidates per probe")
    s.add_argument("--out", type=Path, default=None,
                   help="output folder (default: <run>/search)")
    _add_allow_mismatch(s)
    s.set_defaults(func=_cmd_search)

    s = sub.add_parser("clean", help="drop images far from their class's dominant sub-centre "
                       "(Sub-center ArcFace)")
    s.add_argument("run", help="a Sub-center ArcFace run folder or checkpoint (K >= 2)")
    s.add_argument("--data", type=Path, required=True,
                   help="the aligned folder the run trained on")
    s.add_argument("--out", type=Path, required=True,
                   help="cleaned folder (links to kept images) + clean.json")
    s.add_argument("--angle", type=float, default=75.0,
                   help="drop above this angle (degrees) to the dominant")
    s.add_argument("--truth", type=Path, default=None,
                   help="label_noise.csv to score the dropped set (default: "
                   "DATA/../label_noise.csv if present)")
    s.add_argument("--batch-size", type=int, default=256)
    s.set_defaults(func=_cmd_clean)
    s = sub.add_parser("overlap",
                       help="identities shared by two training sets (class centres), and a merge")
    s.add_argument("dataset_a", type=Path, help="aligned images, one sub-folder per identity")
    s.add_argument("dataset_b", type=Path, help="aligned images, one sub-folder per identity")
    s.add_argument("--model", required=True, help=f"whose model embeds the images: {_MODEL_HELP}")
    s.add_argument("--truth", type=Path, default=None,
                   help="CSV with a_class,b_class columns (synth overlap.csv)")
    s.add_argument("--truth-datasets", nargs=2, metavar=("A", "B"), default=None,
                   help="the truth file's dataset names of A and B (default: found in their paths)")
    s.add_argument("--threshold", type=float, default=0.5,
                   help="centre cosine from which a pair is shared")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--merge", type=Path, default=None,
                   help="write a merged folder (shared pairs = one class)")
    s.add_argument("--centre", action="store_true",
                   help="subtract each dataset's mean embedding first (domain shift)")
    s.set_defaults(func=_cmd_overlap)

    s = sub.add_parser("embed", help="every face of photos -> embeddings (.npz + a CSV index)")
    s.add_argument("model", help=_MODEL_HELP)
    s.add_argument("photos", nargs="+", type=Path, help="photo files or folders")
    s.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    s.add_argument("--batch-size", type=int, default=32, help="faces per model call")
    _add_precision(s)
    s.set_defaults(func=_cmd_embed)

    s = sub.add_parser("verify", help="are the main faces of two photos the same person? "
                       "Exit 0 same, 1 different, 2 error")
    s.add_argument("model", help=_MODEL_HELP)
    s.add_argument("a", type=Path, help="a photo")
    s.add_argument("b", type=Path, help="another photo")
    _add_threshold(s)
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _add_precision(s)
    s.set_defaults(func=_cmd_verify)

    s = sub.add_parser("gallery", help="a persistent face gallery: add, remove, list, identify")
    s.add_argument("--gallery", type=Path, required=True, help="the gallery folder")
    s.add_argument("--model", default=None, help=f"for add and identify: {_MODEL_HELP}")
    _add_precision(s)
    actions = s.add_subparsers(dest="action", required=True, parser_class=_Parser)
    g = actions.add_parser("add", help="enrol the main face of each photo under NAME")
    g.add_argument("name")
    g.add_argument("photos", nargs="+", type=Path)
    g = actions.add_parser("remove", help="remove an identity and its photos")
    g.add_argument("name")
    actions.add_parser("list", help="the identities, their photo counts and dates")
    g = actions.add_parser("identify", help="who is each face of these photos? (open set: "
                           "below the model's threshold, unknown)")
    g.add_argument("photos", nargs="+", type=Path)
    g.add_argument("--top-k", type=int, default=5, help="candidates shown per face")
    _add_threshold(g)
    g.add_argument("--json", action="store_true", help="a JSON list on stdout")
    s.set_defaults(func=_cmd_gallery)

    s = sub.add_parser("serve", help="an HTTP service: embed, verify, a gallery and "
                       "identification (pip install 'facelab[serve]')")
    s.add_argument("model", help=_MODEL_HELP)
    s.add_argument("--gallery", type=Path, required=True,
                   help="the gallery folder (created if missing)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="0: a free port, logged")
    s.add_argument("--api-key", default=None,
                   help="required by the gallery's endpoints and /identify (header X-API-Key "
                   "or Authorization: Bearer); default: $FACELAB_API_KEY, else none")
    s.add_argument("--max-upload-mb", type=float, default=20.0,
                   help="the most one request may upload, all its photos together")
    s.add_argument("--max-batch", type=int, default=16,
                   help="photos of concurrent requests embedded together")
    s.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a photo waits for others to batch with")
    _add_threshold(s)
    _add_precision(s)
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("import", help="another tool's model as a facelab model")
    kinds = s.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    k = kinds.add_parser("dlib", help="dlib's face-recognition ResNet "
                         "(dlib_face_recognition_resnet_model_v1.dat, CC0) as a facelab run folder")
    k.add_argument("src", type=Path, nargs="?", default=None,
                   help="the .dat file (default: the one of pip package face-recognition-models)")
    k.add_argument("--out", type=Path, required=True, help="the run folder to write")
    k.set_defaults(func=_cmd_import_dlib)
    k = kinds.add_parser("insightface", help="an insightface arcface_torch backbone checkpoint "
                         "(backbone.pth) as a facelab run folder")
    k.add_argument("src", type=Path, help="the .pth file")
    k.add_argument("--arch", required=True, help="the insightface architecture the weights "
                   "belong to: r18, r34, r50, r100, r200, mbf or mbf_large")
    k.add_argument("--out", type=Path, required=True, help="the run folder to write")
    k.set_defaults(func=_cmd_import_insightface)
    k = kinds.add_parser("onnx", help="a face-embedding ONNX file without facelab's metadata: "
                         "its preprocessing added, the graph unchanged")
    k.add_argument("src", type=Path, help="the .onnx file")
    k.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    k.add_argument("--preset", default=None, help="a known convention (insightface, "
                   "insightface-mxnet); the options below override its fields")
    k.add_argument("--colour", "--color", choices=["RGB", "BGR"], type=str.upper, default=None)
    k.add_argument("--mean", type=float, nargs="+", default=None, help="1 or 3 numbers")
    k.add_argument("--std", type=float, nargs="+", default=None, help="1 or 3 numbers")
    k.add_argument("--size", type=int, default=None, help="crop height in pixels (112)")
    k.add_argument("--template", default=None, help="alignment template (arcface112)")
    k.add_argument("--backbone", default=None, help="the model's name, stored in the metadata")
    k.add_argument("--layout", choices=["NCHW", "NHWC"], default=None,
                   help="only when the input's shape leaves it open")
    k.set_defaults(func=_cmd_import_onnx)

    s = sub.add_parser("export", help="export a run's embedding network to ONNX (checked "
                       "against torch) or as an insightface backbone state dict")
    s.add_argument("run", help="a run folder or checkpoint")
    s.add_argument("--out", type=Path, required=True, help="the file to write (.onnx, .pth)")
    s.add_argument("--format", choices=["onnx", "insightface"], default="onnx")
    s.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: the exporter's)")
    s.add_argument("--arch", default=None,
                   help="insightface architecture (default: the run's backbone's)")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("demo",
                       help="synthetic data -> alignment -> ArcFace training -> evaluation")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--data", default="data/synth")
    s.add_argument("--quick", action="store_true",
                   help="a tiny run for smoke tests (numbers meaningless)")
    s.set_defaults(func=_cmd_demo)
    _add_experiments(sub)
    return p


def _add_precision(s: argparse.ArgumentParser) -> None:
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="CPU arithmetic: auto picks the fastest this CPU computes accurately")


def _add_threshold(s: argparse.ArgumentParser) -> None:
    s.add_argument("--threshold", type=float, default=None,
                   help="squared L2 distance below which two faces are one person (default: the "
                   "model's stored best-accuracy threshold)")
    s.add_argument("--threshold-set", default=None,
                   help="which stored validation set's threshold (default: the first)")


def _add_allow_mismatch(s: argparse.ArgumentParser) -> None:
    s.add_argument("--allow-mismatch", action="append", default=[], metavar="FIELD",
                   help="evaluate although the data's FIELD (template, size, colour, mean, std, "
                   "or all) differs from the model's preprocessing; repeat for several")


def _add_experiments(sub: argparse._SubParsersAction) -> None:
    """`facelab experiment NAME ...`: one sub-parser per entry of
    facelab.experiments.EXPERIMENTS, its module loaded only when that experiment is parsed."""
    e = sub.add_parser("experiment",
                       help="train variants with one budget and seeds, write a table to docs/")
    names = e.add_subparsers(dest="experiment", required=True, parser_class=_ExperimentParser)
    for name, entry in EXPERIMENTS.items():
        names.add_parser(name, help=entry.help, experiment=name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except FacelabError as e:
        print(f"facelab: error: {e}", file=sys.stderr)
        return 2
    # the disk or the file system refused (full, read-only, permissions, gone)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"facelab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facelab: interrupted", file=sys.stderr)
        return 130
