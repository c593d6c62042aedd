"""The typed run configuration.

Every flag of the original codebase has a home here, with the original's default
(see docs/config.md for the mapping and for the few defaults we changed on purpose).
Loss- and miner-specific parameters live under their own name, e.g. ``loss.margin.beta``
or ``miner.rho_distance.cp``. Names of pluggable parts (datasets, architectures,
losses, miners, samplers, metrics) are checked against the engine's registries.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine import catalog, metric_names


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


def _check_name(kind: str, name: str) -> str:
    return catalog.check_name(kind, name)  # without torch while the registries' modules are not loaded


# --------------------------------------------------------------------------- data


class DataConfig(Section):
    dataset: str = Field(
        "cub200", description="Dataset name: cub200, cars196, online_products, or an embedded set (glyphs, digits)."
    )
    source_path: str | None = Field(
        None,
        description="Parent folder of the datasets (<source_path>/<dataset>); default $DMLTUI_DATA or the user data dir.",
    )
    augmentation: str = Field("base", description="Training augmentation: base, adv, big, red, or none (eval transform only).")
    image_size: int | None = Field(
        None, ge=4, description="Square input size fed to the network; default: the architecture's native size."
    )
    mean: list[float] | None = Field(
        None, min_length=3, max_length=3, description="Per-channel normalisation mean (RGB); default: the backbone's (a timm model's pretrained config)."
    )
    std: list[float] | None = Field(
        None, min_length=3, max_length=3, description="Per-channel normalisation std (RGB); default: the backbone's."
    )
    use_tv_split: bool = Field(False, description="Split the training classes (or samples) into train and validation.")
    tv_split_by_samples: bool = Field(False, description="Split per class by samples instead of by classes.")
    tv_split_perc: float = Field(0.8, gt=0.0, lt=1.0, description="Fraction of the training data kept for training.")
    folds: int = Field(
        0, ge=0, description="Class-disjoint k-fold cross-validation over the training classes: 0 off, k >= 2 folds "
        "(class i belongs to fold i mod k; the classes of data.fold validate, the others train)."
    )
    fold: int = Field(0, ge=0, description="Which of the data.folds folds validates.")
    workers: int = Field(6, ge=0, description="DataLoader worker processes (the original's --kernels).")
    in_memory: bool = Field(False, description="Decode every image once and keep it in RAM (for small datasets).")
    cache: Literal["off", "resized"] = Field(
        "off", description="Image cache: off, or resized (decode every image once into uint8 arrays on disk, shorter side data.cache_size)."
    )
    cache_size: int | None = Field(
        None, ge=8, description="Shorter side of the cached images; default: the eval resize (256 for 224 px input)."
    )
    cache_dir: str | None = Field(None, description="Folder of the image cache; default <source_path>/<dataset>/.dmltui-cache.")

    @model_validator(mode="after")
    def _one_validation_split(self) -> DataConfig:
        if self.folds == 1:
            raise ValueError("data.folds=1 leaves no class to validate on: use 0 (off) or at least 2")
        if self.folds and self.fold >= self.folds:
            raise ValueError(f"data.fold={self.fold} is not one of the {self.folds} folds (0..{self.folds - 1})")
        if self.folds and self.use_tv_split:
            raise ValueError("data.folds and data.use_tv_split both make a validation split: use one")
        return self

    @model_validator(mode="after")
    def _cache_not_below_input(self) -> DataConfig:
        if self.cache_size is not None and self.image_size is not None and self.cache_size < self.image_size:
            raise ValueError(
                f"data.cache_size={self.cache_size} is smaller than data.image_size={self.image_size}; "
                "the cache must not be smaller than the network input"
            )
        return self

    @field_validator("dataset")
    @classmethod
    def _dataset_known(cls, v: str) -> str:
        return _check_name("dataset", v)

    @field_validator("augmentation")
    @classmethod
    def _augmentation_known(cls, v: str) -> str:
        return _check_name("augmentation", v)


# -------------------------------------------------------------------------- model


class ModelConfig(Section):
    arch: str = Field(
        "resnet50_frozen_normalize",
        description="Backbone name (or timm:<any timm model>) plus modifiers: _frozen (BatchNorm statistics frozen), "
        "_normalize (L2 output), _double (average + max pooling), _he (Kaiming init of the head).",
    )
    embed_dim: int = Field(128, ge=1, description="Embedding dimension (with model.head='none': the backbone's width).")
    head: Literal["linear", "none"] = Field(
        "linear", description="Embedding head: linear (to model.embed_dim) or none (the backbone's pooled features, e.g. 384 for ViT-S)."
    )
    pretrained: bool = Field(True, description="Start from pretrained weights (the original's --not_pretrained turns it off).")
    weights_path: str | None = Field(
        None, description="Local file with the backbone's pretrained weights (.pth or .safetensors; no download)."
    )
    timm_kwargs: dict[str, bool | int | float | str] | None = Field(
        None, description="Extra keyword arguments of timm.create_model for timm: backbones, e.g. {drop_path_rate = 0.1}."
    )
    grad_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (timm backbones): less memory for big batches, ~30 % slower."
    )

    @field_validator("arch")
    @classmethod
    def _arch_known(cls, v: str) -> str:
        catalog.parse_arch(v)  # raises ValueError naming the allowed backbones and modifiers
        return v


# --------------------------------------------------------------------------- loss


class ContrastiveParams(Section):
    pos_margin: float = Field(0.0, description="Positive margin m+ (pull positives closer than this).")
    neg_margin: float = Field(1.0, description="Negative margin m- (push negatives beyond this).")


class TripletParams(Section):
    margin: float = Field(0.2, description="Triplet margin on squared distances (also read by the semihard miner).")


class MarginParams(Section):
    margin: float = Field(0.2, description="Margin alpha around the boundary beta.")
    beta: float = Field(1.2, description="Initial value of the per-class boundary beta.")
    beta_lr: float = Field(5e-4, gt=0, description="Learning rate of the learnable beta (its own optimizer group, no weight decay).")
    nu: float = Field(0.0, ge=0, description="Weight of the beta regulariser nu * sum(beta).")
    beta_constant: bool = Field(False, description="Keep beta a fixed scalar instead of a learnable per-class value.")


class ProxyNCAParams(Section):
    lrmulti: float = Field(50.0, gt=0, description="Proxy learning rate = optim.lr * lrmulti.")


class NPairParams(Section):
    l2: float = Field(0.005, ge=0, description="Weight of the mean embedding L2-norm regulariser.")
    input_scale: float | None = Field(
        None, gt=0, description="Factor on the embeddings before the loss; default: 1/4 with a bninception backbone "
        "(as the original does), else 1.")


class AngularParams(Section):
    alpha: float = Field(45.0, gt=0, lt=90, description="Angular margin alpha, in degrees.")
    npair_ang_weight: float = Field(2.0, ge=0, description="Weight lambda_ang of the angular term.")
    npair_l2: float = Field(0.005, ge=0, description="Weight of the embedding-norm regulariser.")


class MultiSimilarityParams(Section):
    pos_weight: float = Field(2.0, gt=0, description="Positive scale alpha.")
    neg_weight: float = Field(40.0, gt=0, description="Negative scale beta.")
    margin: float = Field(0.1, ge=0, description="Pair-mining margin epsilon.")
    thresh: float = Field(0.5, description="Similarity threshold lambda.")


class LiftedParams(Section):
    neg_margin: float = Field(1.0, description="Negative margin.")
    l2: float = Field(0.005, ge=0, description="Weight of the embedding-norm regulariser.")


class QuadrupletParams(Section):
    margin_alpha_1: float = Field(0.2, description="Margin of the triplet part.")
    margin_alpha_2: float = Field(0.2, description="Margin of the quadruplet part.")


class SoftTripleParams(Section):
    n_centroids: int = Field(2, ge=1, description="Centres K per class.")
    margin_delta: float = Field(0.01, description="Margin delta.")
    gamma: float = Field(0.1, gt=0, description="Temperature gamma of the soft assignment to centres.")
    lambda_: float = Field(8.0, alias="lambda", gt=0, description="Scale lambda of the logits.")
    reg_weight: float = Field(0.2, ge=0, description="Weight tau of the centre regulariser.")
    lrmulti: float = Field(1.0, gt=0, description="Centre learning rate = optim.lr * lrmulti.")


class SoftmaxParams(Section):
    lr: float = Field(1e-5, gt=0, description="Learning rate of the class weights.")
    temperature: float = Field(0.05, gt=0, description="Temperature T of the normalised softmax.")


class HistogramParams(Section):
    nbins: int = Field(65, ge=2, description="Number of histogram bins R.")


class SNRParams(Section):
    margin: float = Field(0.2, description="Margin.")
    reg_lambda: float = Field(0.005, ge=0, description="Weight of the zero-mean regulariser on anchor embeddings.")


class ArcFaceParams(Section):
    lr: float = Field(5e-4, gt=0, description="Learning rate of the class weights.")
    angular_margin: float = Field(0.5, ge=0, description="Additive angular margin m, in radians.")
    feature_scale: float = Field(16.0, gt=0, description="Logit scale s.")


class ProxyAnchorParams(Section):
    margin: float = Field(0.1, ge=0, le=1, description="Margin delta.")
    alpha: float = Field(32.0, gt=0, description="Scale alpha; alpha * (1 + margin) must stay <= 80 (float32's exp).")
    lrmulti: float = Field(100.0, gt=0, description="Proxy learning rate = optim.lr * lrmulti (the paper's x100).")


class SupConParams(Section):
    temperature: float = Field(0.1, gt=0, description="Temperature tau.")


class NTXentParams(Section):
    temperature: float = Field(0.07, gt=0, description="Temperature tau.")


class CosFaceParams(Section):
    margin: float = Field(0.35, ge=0, description="Additive cosine margin m.")
    scale: float = Field(64.0, gt=0, description="Logit scale s.")
    lrmulti: float = Field(1.0, gt=0, description="Class-weight learning rate = optim.lr * lrmulti.")


class SubCenterArcFaceParams(Section):
    sub_centers: int = Field(3, ge=1, description="Sub-centres K per class.")
    angular_margin: float = Field(0.5, ge=0, description="Additive angular margin m, in radians.")
    feature_scale: float = Field(64.0, gt=0, description="Logit scale s.")
    lrmulti: float = Field(1.0, gt=0, description="Sub-centre learning rate = optim.lr * lrmulti.")


class CircleParams(Section):
    m: float = Field(0.4, ge=0, description="Relaxation margin m.")
    gamma: float = Field(80.0, gt=0, description="Scale gamma.")


class FastAPParams(Section):
    num_bins: int = Field(10, ge=1, description="Histogram bins over squared distances in [0, 4].")


class SmoothAPParams(Section):
    temperature: float = Field(0.01, gt=0, description="Temperature tau of the sigmoid replacing the rank indicator.")


class XBMParams(Section):
    enabled: bool = Field(False, description="Add a cross-batch memory term (tuple and pair losses only).")
    size: int = Field(8192, ge=1, description="Embeddings kept in the FIFO memory.")
    start_iteration: int = Field(1000, ge=0, description="Training step (from 0) at which the memory term starts.")
    weight: float = Field(1.0, ge=0, description="Weight lambda of the memory term: L(batch) + lambda * L(batch, memory).")


class LossConfig(Section):
    name: str = Field("margin", description="Training objective (see `engine.losses.list_losses()`).")
    contrastive: ContrastiveParams = Field(default_factory=ContrastiveParams, description="Contrastive loss parameters.")
    triplet: TripletParams = Field(default_factory=TripletParams, description="Triplet loss parameters.")
    margin: MarginParams = Field(default_factory=MarginParams, description="Margin loss parameters.")
    proxynca: ProxyNCAParams = Field(default_factory=ProxyNCAParams, description="ProxyNCA parameters.")
    npair: NPairParams = Field(default_factory=NPairParams, description="N-pair loss parameters.")
    angular: AngularParams = Field(default_factory=AngularParams, description="Angular loss parameters.")
    multisimilarity: MultiSimilarityParams = Field(
        default_factory=MultiSimilarityParams, description="Multi-similarity loss parameters."
    )
    lifted: LiftedParams = Field(default_factory=LiftedParams, description="Generalised lifted structure parameters.")
    quadruplet: QuadrupletParams = Field(default_factory=QuadrupletParams, description="Quadruplet loss parameters.")
    softtriplet: SoftTripleParams = Field(default_factory=SoftTripleParams, description="SoftTriple loss parameters.")
    softmax: SoftmaxParams = Field(default_factory=SoftmaxParams, description="Normalised softmax parameters.")
    histogram: HistogramParams = Field(default_factory=HistogramParams, description="Histogram loss parameters.")
    snr: SNRParams = Field(default_factory=SNRParams, description="SNR loss parameters.")
    arcface: ArcFaceParams = Field(default_factory=ArcFaceParams, description="ArcFace parameters.")
    proxy_anchor: ProxyAnchorParams = Field(default_factory=ProxyAnchorParams, description="Proxy-Anchor parameters.")
    supcon: SupConParams = Field(default_factory=SupConParams, description="Supervised contrastive loss parameters.")
    ntxent: NTXentParams = Field(default_factory=NTXentParams, description="NT-Xent (InfoNCE) parameters.")
    cosface: CosFaceParams = Field(default_factory=CosFaceParams, description="CosFace parameters.")
    subcenter_arcface: SubCenterArcFaceParams = Field(
        default_factory=SubCenterArcFaceParams, description="Sub-center ArcFace parameters."
    )
    circle: CircleParams = Field(default_factory=CircleParams, description="Circle loss parameters.")
    fastap: FastAPParams = Field(default_factory=FastAPParams, description="FastAP parameters.")
    smoothap: SmoothAPParams = Field(default_factory=SmoothAPParams, description="Smooth-AP parameters.")
    xbm: XBMParams = Field(default_factory=XBMParams, description="Cross-batch memory (Wang et al. 2020).")

    @field_validator("name")
    @classmethod
    def _loss_known(cls, v: str) -> str:
        return _check_name("loss", v)


# -------------------------------------------------------------------------- miner


class DistanceMinerParams(Section):
    lower_cutoff: float = Field(0.5, ge=0, description="Distances are clamped from below to this value before weighting.")
    upper_cutoff: float | None = Field(
        None,
        gt=0,
        description="Negatives farther than this get weight 0 (Wu et al.); None as in the paper's runs (the original flag was dead).",
    )


class RhoDistanceMinerParams(DistanceMinerParams):
    cp: float = Field(0.2, ge=0, le=1, description="Probability p_c of turning a triplet into a push-positives-apart triplet.")


class ParametricMinerParams(Section):
    mode: Literal["uniform", "hards", "semihards", "veryhards"] = Field(
        "uniform", description="Shape of the fixed negative-distance distribution (PADS)."
    )
    n_support: int = Field(100, ge=2, description="Number of distance bins of the distribution's support.")
    support_lim: tuple[float, float] = Field((0.1, 1.9), description="Distance range [low, high] covered by the bins.")


class MinerConfig(Section):
    name: str = Field("distance", description="Batch miner (see `engine.miners.list_miners()`).")
    distance: DistanceMinerParams = Field(default_factory=DistanceMinerParams, description="Distance-weighted miner.")
    rho_distance: RhoDistanceMinerParams = Field(
        default_factory=RhoDistanceMinerParams, description="Rho-regularised distance miner."
    )
    parametric: ParametricMinerParams = Field(default_factory=ParametricMinerParams, description="Parametric miner.")

    @field_validator("name")
    @classmethod
    def _miner_known(cls, v: str) -> str:
        return _check_name("miner", v)


# ------------------------------------------------------------------------ sampler


class SamplerConfig(Section):
    name: str = Field("class_random", description="Batch sampler (the original's --data_sampler).")
    batch_size: int = Field(112, ge=2, description="Training batch size (the original's --bs).")
    samples_per_class: int = Field(2, ge=1, description="Samples drawn per chosen class; must divide batch_size.")
    batchmatch_bigbs: int = Field(512, ge=2, description="Size of the big batch that storage samplers summarise.")
    batchmatch_ncomps: int = Field(10, ge=1, description="Candidate batches tried by the batch-match samplers.")
    storage_no_update: bool = Field(False, description="Do not refresh the sampler's embedding memory with batch embeddings.")
    d2_coreset_lambda: float = Field(1.0, description="Exponent on the distance term of D2 coreset sampling.")
    gc_coreset_lim: float = Field(1e-9, description="Greedy-coreset limit (stored by the original, unused).")
    lowproj_dim: int = Field(-1, description="If > 0, random projection dimension before coreset or matching.")
    sim_measure: str = Field("euclidean", description="Similarity measure of storage samplers (unused by the original).")
    gc_softened: bool = Field(False, description="Greedy coreset picks at random above the 97th min-distance percentile.")
    idx_full_prec: bool = Field(False, description="Refresh the whole sampler memory at the start of every epoch.")
    mb_mom: float = Field(-1.0, description="Momentum of memory updates (negative: overwrite).")
    mb_lr: float = Field(1.0, description="Deprecated in the original, unused.")

    @field_validator("name")
    @classmethod
    def _sampler_known(cls, v: str) -> str:
        return _check_name("sampler", v)

    @model_validator(mode="after")
    def _batch_divisible(self) -> SamplerConfig:
        if self.batch_size % self.samples_per_class:
            raise ValueError(
                f"sampler.batch_size={self.batch_size} is not a multiple of "
                f"sampler.samples_per_class={self.samples_per_class}"
            )
        return self


# -------------------------------------------------------------------------- optim


class OptimConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimizer: adam (L2 in the gradient), adamw, sgd (momentum).")
    lr: float = Field(1e-5, gt=0, description="Learning rate of the network.")
    fc_lr: float | None = Field(None, gt=0, description="Separate learning rate of the embedding head; None: same as lr.")
    weight_decay: float = Field(4e-4, ge=0, description="Weight decay of the network parameters (the original's --decay).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    epochs: int = Field(150, ge=1, description="Number of training epochs (the original's --n_epochs).")
    scheduler: Literal["step", "cosine", "warmup_cosine", "none"] = Field(
        "step",
        description="Learning-rate schedule: step (MultiStepLR at tau), cosine (to 0 over the epochs, stepped per epoch), "
        "warmup_cosine (linear warmup, then cosine to min_lr_ratio·lr, stepped per iteration) or none.",
    )
    warmup_epochs: float = Field(0.0, ge=0, description="warmup_cosine: epochs of linear warmup (fractions allowed).")
    warmup_iterations: int = Field(0, ge=0, description="warmup_cosine: iterations of linear warmup (instead of warmup_epochs).")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="warmup_cosine: the final learning rate as a fraction of each group's.")
    decay_exclude: bool = Field(
        False, description="No weight decay on biases, norm weights, other 1-d parameters, position embeddings and class tokens."
    )
    layer_decay: float | None = Field(
        None, gt=0, le=1, description="Layer-wise lr decay of timm backbones: block i of L gets lr·layer_decay^(L-i) (timm's param_groups_layer_decay)."
    )
    freeze_backbone_epochs: int = Field(
        0, ge=0, description="Train only the head and the loss's parameters for the first N epochs (Proxy-Anchor's warm-up)."
    )
    gamma: float = Field(0.3, gt=0, description="MultiStepLR decay factor.")
    tau: list[int] = Field([1000], description="MultiStepLR milestones in epochs (1000 > epochs: no decay, as in the paper).")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm of all parameters to this value; None: no clipping.")

    @model_validator(mode="after")
    def _one_warmup(self) -> OptimConfig:
        if self.warmup_epochs and self.warmup_iterations:
            raise ValueError("give optim.warmup_epochs or optim.warmup_iterations, not both")
        if (self.warmup_epochs or self.warmup_iterations) and self.scheduler != "warmup_cosine":
            raise ValueError(f"optim.warmup_epochs/warmup_iterations need optim.scheduler='warmup_cosine', not {self.scheduler!r}")
        return self


# --------------------------------------------------------------------------- eval

DEFAULT_EVAL_METRICS = [
    "e_recall@1",
    "e_recall@2",
    "e_recall@4",
    "nmi",
    "f1",
    "mAP_1000",
    "mAP_lim",
    "mAP_c",
    "dists@intra",
    "dists@inter",
    "dists@intra_over_inter",
    "rho_spectrum@0",
    "rho_spectrum@-1",
    "rho_spectrum@1",
    "rho_spectrum@2",
    "rho_spectrum@10",
]


class EvalConfig(Section):
    metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EVAL_METRICS), description="Metrics computed at every evaluation."
    )
    storage_metrics: list[str] = Field(
        default_factory=lambda: ["e_recall@1"], description="An improvement in any of these writes a best checkpoint."
    )
    evaltypes: list[Literal["discriminative"]] = Field(
        default_factory=lambda: ["discriminative"], description="Embedding heads to evaluate (only 'discriminative' exists)."
    )
    on_gpu: bool = Field(False, description="Compute metrics on the GPU when one is available (the original's --evaluate_on_gpu).")
    backend: Literal["auto", "torch", "faiss"] = Field(
        "auto",
        description="kNN/k-means backend: auto (torch, on the GPU and on the CPU, where it measured faster than faiss), torch, faiss.",
    )
    train_metrics: bool = Field(True, description="Also evaluate on the training classes (eval transform).")
    at_start: bool = Field(False, description="Evaluate the untrained network before the first epoch (logged as epoch 0).")
    raw_pixel_baseline: bool = Field(False, description="Also report the metrics of raw pixels on the test split.")
    every: int = Field(1, ge=1, description="Evaluate every N epochs (the last epoch is always evaluated).")
    only: bool = Field(
        False, description="Evaluate the initial network (e.g. pretrained, no training) as epoch 0, checkpoint it and finish."
    )
    batch_size: int | None = Field(None, ge=1, description="Batch size of embedding extraction; default sampler.batch_size.")
    test: bool = Field(
        True, description="Use the test split. false (hyperparameter search): it is not even loaded, so nothing can "
        "be chosen on it; needs a validation split (data.folds or data.use_tv_split)."
    )

    @field_validator("metrics", "storage_metrics")
    @classmethod
    def _metrics_known(cls, v: list[str]) -> list[str]:
        for name in v:
            metric_names.check_metric_name(name)
        return v

    @model_validator(mode="after")
    def _storage_subset(self) -> EvalConfig:
        missing = [m for m in self.storage_metrics if m not in self.metrics]
        if missing:
            raise ValueError(f"eval.storage_metrics {missing} must also be listed in eval.metrics")
        return self


# ---------------------------------------------------------------------------- log


class LogConfig(Section):
    online: bool = Field(False, description="Log to Weights & Biases (key from WANDB_API_KEY or netrc, never stored).")
    project: str = Field("Sample_Project", description="W&B project.")
    group: str = Field("Sample_Group", description="W&B group; also the stem of the run name.")
    name: str | None = Field(
        None, description="W&B run name; default <group>_s<seed> (the original's). dmltui sets it to its run's name."
    )
    id: str | None = Field(
        None, description="W&B run id (a run resumed with the same id continues its W&B run); default: a new one. "
        "dmltui sets it to its run's id."
    )
    tags: list[str] = Field(default_factory=list, description="W&B tags; dmltui adds its run's tags.")
    savename: str = Field(
        "group_plus_seed", description="Run folder name; 'group_plus_seed' gives <group>_s<seed> online, a timestamp otherwise."
    )
    save_path: str = Field("Training_Results", description="Results root for runs started without --run-dir.")
    progress: bool = Field(True, description="Show a live progress bar when attached to a terminal.")


# ---------------------------------------------------------------------------- run


class RunConfig(Section):
    seed: int = Field(1, description="Seed of python, numpy and torch (and of the sampler).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the first listed GPU when CUDA is available, else CPU.")
    gpus: list[int] = Field(default_factory=lambda: [0], description="GPU indices to use (the original's --gpu).")
    deterministic: bool = Field(True, description="Ask cuDNN and torch for deterministic kernels.")
    threads: int | None = Field(None, ge=1, description="CPU threads of torch; default: torch's choice.")
    amp: Literal["off", "bf16", "fp16"] = Field("off", description="Mixed precision of forward passes (fp16 adds loss scaling); losses stay fp32.")
    channels_last: bool = Field(False, description="Use the channels-last memory format for images and the network (faster convs on GPUs).")
    compile: bool = Field(False, description="Compile the network with torch.compile.")


# --------------------------------------------------------------------------- root


class Config(Section):
    """A complete, validated run configuration."""

    data: DataConfig = Field(default_factory=DataConfig, description="Dataset, split and augmentation.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Backbone and embedding head.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Training objective and its parameters.")
    miner: MinerConfig = Field(default_factory=MinerConfig, description="Batch miner and its parameters.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="How training batches are composed.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer and learning-rate schedule.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation metrics and checkpoint selection.")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging and output locations.")
    run: RunConfig = Field(default_factory=RunConfig, description="Seed and devices.")

    @model_validator(mode="after")
    def _loss_accepts_miner(self) -> Config:
        catalog.check_miner(self.loss.name, self.miner.name)
        return self

    @model_validator(mode="after")
    def _test_free_runs_validate(self) -> Config:
        if not self.eval.test:
            if not (self.data.folds or self.data.use_tv_split):
                raise ValueError("eval.test=false needs a validation split: set data.folds or data.use_tv_split")
            if self.eval.raw_pixel_baseline:
                raise ValueError("eval.raw_pixel_baseline reports on the test split, which eval.test=false excludes")
        return self

    @model_validator(mode="after")
    def _memory_feeds_loss(self) -> Config:
        if self.loss.xbm.enabled:
            catalog.check_memory(self.loss.name)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML/JSON-ready; None values dropped, aliases used)."""
        return _drop_none(self.model_dump(mode="json", by_alias=True))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def json_schema() -> dict[str, Any]:
    """JSON schema of :class:`Config` (the TUI builds its forms from it)."""
    return Config.model_json_schema(by_alias=True)
