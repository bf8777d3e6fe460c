"""Training configuration: dataclasses, strict YAML and dotted overrides.

`load_config("configs/demo.yaml", ["optim.lr=0.05"])` returns a `Config`. Every key must be a known
field (a typo is an error naming the key and the valid ones); values are checked against the field
type (facelab.configcheck), and each section checks its values' ranges and combinations in
`__post_init__`. Free-form mappings (`model.kwargs`, `head.kwargs`) are passed to the registries,
which check them.
"""

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facelab.configcheck import build, choice, require
from facelab.errors import FacelabError

log = logging.getLogger(__name__)

# The choices a config holds by name; the registries of higher layers (margins, backbones, pair
# losses) are checked by facelab.train.task.check_names before any work starts.
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "poly", "cosine")
AMP_MODES = ("none", "bf16", "fp16")
SAMPLERS = ("uniform", "pk", "siamese")
OBJECTIVE_NAMES = ("head", "pairs", "head+pairs")
_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")


@dataclass
class AdaptiveSamplingConfig:
    """AdaptiveFace's Adaptive Data Sampling (facelab.data.samplers.AdaptiveBatchSampler):
    per-image weights multiplied by `up` when the image was misclassified and by `down` when
    correct, kept in [min, max]."""

    enabled: bool = False
    up: float = 1.25
    down: float = 0.8
    min_weight: float = 0.2
    max_weight: float = 5.0

    def __post_init__(self) -> None:
        require(self.up >= 1.0, "data.adaptive_sampling.up", self.up, "must be >= 1")
        require(0.0 < self.down <= 1.0, "data.adaptive_sampling.down", self.down,
                "must be in (0, 1]")
        ok = 0.0 < self.min_weight <= 1.0 <= self.max_weight < float("inf")
        rule = "needs 0 < min_weight <= 1 <= max_weight"
        require(ok, "data.adaptive_sampling.min_weight", self.min_weight, rule)


@dataclass
class DatasetEntry:
    """One training set of a multi-dataset run (DAIL, facelab.data.multi): its own class space,
    and a sampling weight that fixes its share of every batch."""

    path: str = ""  # image folder or RecordIO (anything facelab.data.open_training_set reads)
    weight: float = 1.0
    name: str = ""  # default: the folder name

    def __post_init__(self) -> None:
        require(bool(self.path), "data.datasets[].path", self.path, "is required")
        require(0.0 < self.weight < float("inf"), "data.datasets[].weight", self.weight,
                "must be > 0")


@dataclass
class DataConfig:
    train: str = ""  # folder of aligned images, one sub-folder per identity
    val_pairs: list[str] = field(default_factory=list)  # .bin pair sets evaluated during training
    batch_size: int = 128
    workers: int = 2  # loader processes; 0 loads in the training process
    preload: bool = False  # decode the whole set into memory once (small sets, CPU)
    flip: bool = True  # random horizontal flip
    adaptive_sampling: AdaptiveSamplingConfig = field(default_factory=AdaptiveSamplingConfig)
    # uniform | pk (P identities x pk_k images) | siamese (a, b pairs); data/pk_sampler.py
    sampler: str = "uniform"
    pk_k: int = 4  # images per identity in a pk batch (batch_size must be a multiple)
    positive_fraction: float = 0.5  # siamese: fraction of same-identity pairs per batch
    # multi-dataset training (DAIL); else `train`
    datasets: list[DatasetEntry] = field(default_factory=list)
    # decode every training image before the run; bad ones are listed (data/check.py)
    check_images: bool = True
    # train without the bad images found (listed in the run folder) instead of refusing
    skip_bad: bool = False

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be >= 1")
        require(self.workers >= 0, "data.workers", self.workers,
                "must be >= 0 (0: load in the training process)")
        choice(self.sampler, SAMPLERS, "data.sampler")
        require(self.pk_k >= 2, "data.pk_k", self.pk_k,
                "must be >= 2 (a pk batch needs positive pairs)")
        require(0.0 <= self.positive_fraction <= 1.0, "data.positive_fraction",
                self.positive_fraction, "must be in [0, 1]")
        if self.train and self.datasets:
            raise FacelabError("config data.datasets: give data.train or data.datasets, not both")
        require(not (self.datasets and self.adaptive_sampling.enabled),
                "data.adaptive_sampling.enabled", True, "is not implemented with data.datasets")
        require(not (self.datasets and self.sampler != "uniform"), "data.sampler", self.sampler,
                "is not implemented with data.datasets (their sampler gives each dataset a fixed "
                "batch share)")
        require(not (self.adaptive_sampling.enabled and self.sampler != "uniform"),
                "data.sampler", self.sampler,
                "cannot be combined with data.adaptive_sampling (each brings its own sampler)")


@dataclass
class GroupFaceConfig:
    """GroupFace neck around any backbone (facelab.backbones.groupface); groups = 0 disables it."""

    groups: int = 0  # K latent groups (the paper: 32); 0: no GroupFace
    lam: float = 0.1  # weight of the self-distributed group loss
    hidden: int = 256  # width of the group decision network

    def __post_init__(self) -> None:
        key = "model.groupface."
        require(self.groups == 0 or self.groups >= 2, key + "groups", self.groups,
                "must be 0 or >= 2")
        require(0.0 <= self.lam < float("inf"), key + "lam", self.lam,
                "must be a finite number >= 0")
        require(self.hidden >= 1, "model.groupface.hidden", self.hidden, "must be >= 1")


@dataclass
class ModelConfig:
    backbone: str = "iresnet50"
    embedding_size: int = 512
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra backbone arguments
    groupface: GroupFaceConfig = field(default_factory=GroupFaceConfig)
    # fine-tuning: a facelab run folder or checkpoint file whose embedding network (same
    # architecture) a new run starts from; the head starts afresh (facelab.train.finetune)
    init_from: str | None = None

    def __post_init__(self) -> None:
        require(self.embedding_size >= 1, "model.embedding_size", self.embedding_size,
                "must be >= 1")
        require(self.init_from is None or bool(self.init_from.strip()), "model.init_from",
                self.init_from, "must name a run folder or checkpoint file (null: random init)")


@dataclass
class HeadConfig:
    margin: str = "arcface"
    kwargs: dict[str, Any] = field(default_factory=dict)  # margin arguments (s, m, ...)
    # class sub-centres K; None: the margin's default (3 for subcenter_arcface)
    sub_centers: int | None = None
    # AdaptiveFace Hard Prototype Mining: k nearest prototypes per class; 0: off
    hard_prototypes: int = 0
    # Partial FC: share of each shard's classes in a step's softmax; 1.0: all
    sample_rate: float = 1.0
    # DAIL: each sample's softmax over its own dataset's classes (data.datasets)
    dataset_aware: bool = False
    # DAIL: probability that an other-dataset class joins the denominator
    crossing_dropout: float = 0.0

    def __post_init__(self) -> None:
        k = self.sub_centers
        require(k is None or k >= 1, "head.sub_centers", k,
                "must be >= 1 (or null: the margin's default)")
        require(self.hard_prototypes >= 0, "head.hard_prototypes", self.hard_prototypes,
                "must be >= 0")
        require(0.0 < self.sample_rate <= 1.0, "head.sample_rate", self.sample_rate,
                "must be in (0, 1]")
        require(0.0 <= self.crossing_dropout <= 1.0, "head.crossing_dropout",
                self.crossing_dropout, "must be in [0, 1]")
        require(self.dataset_aware or not self.crossing_dropout, "head.crossing_dropout",
                self.crossing_dropout, "needs head.dataset_aware: true")


@dataclass
class PairsConfig:
    """Pair-based metric learning (facelab.losses.pairs, pytorch-metric-learning), used when the
    top-level `objective` is pairs or head+pairs. Names are checked by the registries there."""

    loss: str = "contrastive"  # contrastive | triplet | margin
    # "" (all pairs / triplets) | semihard | distance_weighted | uniform_histogram
    miner: str = ""
    distance: str = "l2"  # l2 (Euclidean of L2-normalised embeddings) | l2_raw (unnormalised)
    weight: float = 1.0  # weight of the pair term in the loss dict
    kwargs: dict[str, Any] = field(default_factory=dict)  # loss arguments (margins, beta, ...)
    miner_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(0.0 <= self.weight < float("inf"), "pairs.weight", self.weight,
                "must be a finite number >= 0")


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def __post_init__(self) -> None:
        choice(self.name, OPTIMIZERS, "optim.name")
        require(0.0 < self.lr < math.inf, "optim.lr", self.lr, "must be a finite number > 0")
        require(0.0 <= self.momentum < 1.0, "optim.momentum", self.momentum, "must be in [0, 1)")
        require(0.0 <= self.weight_decay < math.inf, "optim.weight_decay", self.weight_decay,
                "must be a finite number >= 0")
        ok = len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas)
        require(ok, "optim.betas", self.betas, "must be two numbers in [0, 1)")


@dataclass
class ScheduleConfig:
    name: str = "poly"  # constant | poly | cosine
    warmup_steps: int = 0  # linear warm-up from 0
    power: float = 2.0  # poly exponent
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        choice(self.name, SCHEDULES, "schedule.name")
        require(self.warmup_steps >= 0, "schedule.warmup_steps", self.warmup_steps,
                "must be >= 0")
        require(0.0 < self.power < math.inf, "schedule.power", self.power,
                "must be a finite number > 0")
        require(0.0 <= self.min_lr < math.inf, "schedule.min_lr", self.min_lr,
                "must be a finite number >= 0")


@dataclass
class TrainConfig:
    steps: int = 1000
    amp: str = "none"  # none | bf16 | fp16 (autocast; logits and loss stay float32)
    clip_grad_norm: float = 0.0  # 0 disables
    device: str = "cpu"
    channels_last: bool = False
    # CUDA: let cuDNN time its convolution algorithms for the fixed input shape
    cudnn_benchmark: bool = True
    # torch.compile the backbone's training forward (inductor: a C++ compiler on CPU)
    compile: bool = False
    log_every: int = 20
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 500
    # tqdm bar on a terminal; else a status line on stderr every status_every seconds
    progress: bool = True
    status_every: float = 30.0
    tensorboard: bool = True
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # backbone parts not trained: prefixes of the backbone's parameter names ("stem", "stages.0"),
    # matched on whole dotted components (facelab.train.finetune)
    freeze: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = "train."
        for i, entry in enumerate(self.freeze):
            ok = bool(entry) and entry == entry.strip() and "" not in entry.split(".")
            require(ok, f"{k}freeze[{i}]", entry,
                    "must be a dotted name of backbone parameters, e.g. 'stem' or 'stages.0'")
        require(self.steps >= 1, k + "steps", self.steps, "must be >= 1")
        choice(self.amp, AMP_MODES, k + "amp")
        require(0.0 <= self.clip_grad_norm < math.inf, k + "clip_grad_norm", self.clip_grad_norm,
                "must be a finite number >= 0 (0: off)")
        require(bool(_DEVICE.fullmatch(self.device)), k + "device", self.device,
                "must be cpu, cuda, cuda:N or mps")
        for key in ("log_every", "checkpoint_every"):
            require(getattr(self, key) >= 1, k + key, getattr(self, key), "must be >= 1")
        require(self.eval_every >= 0, k + "eval_every", self.eval_every,
                "must be >= 0 (0: only at the end)")
        require(self.threads >= 0, k + "threads", self.threads,
                "must be >= 0 (0: torch's default)")
        require(0.0 < self.status_every < math.inf, k + "status_every", self.status_every,
                "must be a finite number of seconds > 0")


@dataclass
class DistillConfig:
    """Hard-sample distillation (facelab.distill): DDL (Huang et al. 2020) between easy (teacher)
    and hard (student) images of the same identities in every batch. split: how images become
    easy or hard."""

    name: str = "none"  # none | ddl
    # attribute (pose/resolution from a CSV) | degradation (hard views made on the fly)
    split: str = "attribute"
    kl_pos: float = 0.1  # weight of KL(P+ teacher ‖ P+ student)
    kl_neg: float = 0.02  # weight of KL(P- teacher ‖ P- student)
    order: float = 0.5  # weight of the order term Σ (mean neg − mean pos)
    bins: int = 1000  # soft-histogram bins on [0, 1)
    sigma: float = 0.1  # Gaussian kernel width of the histograms
    # DDL's open choices (facelab.losses.ddl; docs/ddl.md says which source set each default)
    detach_teacher: bool = False  # true: no gradient through the teacher's histograms in the KLs
    negatives: str = "all"  # hardest negative over: all | upper (only j > i, floored at 0)
    positive_min: float | None = None  # drop positive pairs with cos <= this; null keeps all
    bin_nodes: str = "left"  # histogram nodes t_r: left (r / bins) | mid ((r + 0.5) / bins)
    kl_form: str = "floor"  # floor: p·(log(p+1e-10) − log(q+1e-10)) | smooth: p, q + 1e-9
    identities_per_batch: int = 16  # identities with easy + hard images in every (global) batch
    easy_per_identity: int = 2
    hard_per_identity: int = 2  # the rest of the batch: random images, not used by DDL
    # split attribute: CSV with image (relative to data.train), yaw_deg, resolution
    attributes: str = ""
    easy_max_yaw: float = 30.0  # easy: |yaw_deg| < this and resolution >= easy_min_resolution
    easy_min_resolution: float = 40.0
    hard_min_yaw: float = 30.0  # hard: |yaw_deg| >= this or resolution < hard_max_resolution
    hard_max_resolution: float = 40.0
    # split degradation: down-sampled side px
    degrade_side: list[int] = field(default_factory=lambda: [14, 40])
    degrade_blur: float = 1.0  # max Gaussian blur sigma (px, at full size)
    degrade_noise: float = 6.0  # max Gaussian noise sigma (grey levels)
    degrade_jpeg: list[int] = field(default_factory=lambda: [30, 90])  # JPEG quality range
    # identities held out of training for the histogram plots; 0: no plots
    plot_identities: int = 16

    def __post_init__(self) -> None:
        k = "distill."
        require(self.name in ("none", "ddl"), k + "name", self.name, "must be none or ddl")
        splits = ("attribute", "degradation")
        require(self.split in splits, k + "split", self.split, "must be attribute or degradation")
        for key in ("kl_pos", "kl_neg", "order", "degrade_blur", "degrade_noise"):
            v = getattr(self, key)
            require(0.0 <= v < float("inf"), k + key, v, "must be a finite number >= 0")
        require(self.bins >= 1, k + "bins", self.bins, "must be >= 1")
        require(self.sigma > 0, k + "sigma", self.sigma, "must be > 0")
        choice(self.negatives, ("all", "upper"), k + "negatives")
        pmin = self.positive_min
        require(pmin is None or -1.0 <= pmin < 1.0, k + "positive_min", pmin,
                "must be null or a number in [-1, 1)")
        choice(self.bin_nodes, ("left", "mid"), k + "bin_nodes")
        choice(self.kl_form, ("floor", "smooth"), k + "kl_form")
        require(self.identities_per_batch >= 1, k + "identities_per_batch",
                self.identities_per_batch, "must be >= 1")
        for key in ("easy_per_identity", "hard_per_identity"):
            require(getattr(self, key) >= 2, k + key, getattr(self, key),
                    "must be >= 2 (positive pairs)")
        side, q = self.degrade_side, self.degrade_jpeg
        ok = len(side) == 2 and 2 <= side[0] <= side[1]
        require(ok, k + "degrade_side", side, "must be [lo, hi] with 2 <= lo <= hi")
        require(len(q) == 2 and 1 <= q[0] <= q[1] <= 100, k + "degrade_jpeg", q,
                "must be [lo, hi] in 1..100")
        require(self.plot_identities >= 0, k + "plot_identities", self.plot_identities,
                "must be >= 0")


@dataclass
class InvarianceConfig:
    """DAIL dataset-invariant learning (facelab.losses.dail): a dataset classifier on the
    embedding behind a gradient reversal layer; weight 0 disables it. Before `adversarial_from`
    it learns on detached features (stage 1); from that step on its gradient reaches the
    embedding reversed, times λ (stage 2)."""

    weight: float = 0.0  # weight of the dataset classifier's cross-entropy; 0: off
    grl_lambda: float = 1.0  # λ reached after the warm-up
    warmup_steps: int = 100  # DANN ramp of λ from 0, starting at adversarial_from
    adversarial_from: int = 0  # first step of stage 2 (0: adversarial from the start)
    hidden: int = 0  # hidden width of the dataset classifier; 0: linear

    def __post_init__(self) -> None:
        key = "dail."
        require(0.0 <= self.weight < float("inf"), key + "weight", self.weight,
                "must be a finite number >= 0")
        require(0.0 <= self.grl_lambda < float("inf"), key + "grl_lambda", self.grl_lambda,
                "must be >= 0")
        require(self.warmup_steps >= 0, key + "warmup_steps", self.warmup_steps, "must be >= 0")
        require(self.adversarial_from >= 0, key + "adversarial_from", self.adversarial_from,
                "must be >= 0")
        require(self.hidden >= 0, key + "hidden", self.hidden, "must be >= 0")


@dataclass
class Config:
    name: str = "run"
    output: str = "runs/run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    objective: str = "head"  # head | pairs (pair loss alone, no classifier head) | head+pairs
    pairs: PairsConfig = field(default_factory=PairsConfig)
    dail: InvarianceConfig = field(default_factory=InvarianceConfig)

    def __post_init__(self) -> None:
        require(0 <= self.seed < 2**32, "seed", self.seed,
                "must be in [0, 2**32) (numpy's seed range)")
        require(bool(self.output), "output", self.output, "must name the run folder")
        choice(self.objective, OBJECTIVE_NAMES, "objective")
        ads = self.data.adaptive_sampling.enabled
        require(not (ads and self.objective == "pairs"), "data.adaptive_sampling.enabled", ads,
                "needs a classifier head (objective is 'pairs')")
        require(not (ads and self.distill.name != "none"), "data.adaptive_sampling.enabled", ads,
                f"cannot be combined with distill.name {self.distill.name} (each brings its own "
                "sampler)")
        lr, floor = self.optim.lr, self.schedule.min_lr
        require(floor <= lr, "schedule.min_lr", floor, f"must be <= optim.lr ({lr})")
        if self.schedule.warmup_steps > self.train.steps:
            log.warning("config schedule.warmup_steps: %d is more than train.steps (%d): the run "
                        "ends before the warm-up does", self.schedule.warmup_steps,
                        self.train.steps)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise FacelabError(f"config override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise FacelabError(f"config override {item!r}: expected key=value "
                               "(e.g. optim.lr=0.05)")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return data


def config_from_dict(data: dict) -> Config:
    return build(Config, data, "")


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe, apply dotted overrides, validate every key and type."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise FacelabError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise FacelabError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise FacelabError(f"{path}: a config must be a mapping of sections")
    data.setdefault("name", path.stem)
    try:
        return config_from_dict(apply_overrides(data, overrides or []))
    except FacelabError as e:
        raise FacelabError(f"{path}: {e}") from None


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


__all__ = ["Config", "apply_overrides", "config_from_dict", "config_to_dict", "load_config"]
