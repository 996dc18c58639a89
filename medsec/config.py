"""Experiment configuration: pydantic models read from YAML, with `quick`, `full` and `full-smoke` profiles.

`full-smoke` is the full profile with only its sizes shrunk (SMOKE_SIZES: a handful of images, one epoch, a
few attack steps): the same 224 px images, architectures, widths, depths and defences, so a CPU run of it
meets every shape, memory and dtype path the full profile takes, in minutes.

A wrong key or value is a ConfigError that names it (e.g. ``train.epochs: Input should be greater than 0``).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medsec.errors import ConfigError

PROFILES = ("quick", "full", "full-smoke")

# The sizes `full-smoke` lays over `full`: counts of images, epochs, steps, models and grid points only;
# never an image size, architecture, width, depth or defence setting (tests/test_config.py checks this),
# so the smoke run cannot drift from the full profile's code paths.
SMOKE_SIZES: dict[str, Any] = {
    "data": {"n_train": 16, "n_val": 8, "n_test": 8},
    "train": {"epochs": 1, "patience": 1},
    "defences": {"gmm": {"ssat_epochs": 1}},
    "reproduce": {"n_test": 2, "steps": 2, "adaptive_rounds": 2, "original_steps": 2, "surrogates": 2,
                  "curve_multipliers": [2.0],
                  "n_curve": 1, "n_samples": 2},
    "transfer": {"n_train": 20, "n_val": 8, "n_test": 8, "epochs": 1, "inits": ["pretrained"],
                 "data_variants": ["d0"], "data_variant_inits": ["pretrained"],
                 "eps": [0.01], "pgd_steps": 2, "n_eval": 4},
    "survey": {"n_eval": 4, "patch_sizes": [0.01], "patch_steps": 2, "onepixel_pixels": [1],
               "onepixel_popsize": 4, "onepixel_iterations": 1, "onepixel_n_eval": 2, "uap_eps": [0.01],
               "uap_epochs": 1, "backdoor_rates": [0.05], "fc_targets": 1, "fc_poisons": 1, "fc_steps": 2},
}
DERIVED_PROFILES: dict[str, tuple[str, dict[str, Any]]] = {"full-smoke": ("full", SMOKE_SIZES)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """How much data to draw and at what size (synthetic), or where the real data lies."""

    image_size: int = Field(64, ge=16, le=1024)
    n_train: int = Field(1500, gt=0)
    n_val: int = Field(300, gt=0)
    n_test: int = Field(300, gt=0)
    data_root: str | None = None  # real data: the publisher's layout under this folder


class TrainConfig(_Strict):
    """Victim training: Adam, early stopping on the validation metric."""

    epochs: int = Field(20, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(4, ge=1)  # epochs without validation improvement before stopping
    augment: bool = True  # random horizontal flips and small shifts
    # multi-label victims: where each finding is decided positive (see medsec.models.training.operating_point)
    operating_point: Literal["prevalence", "youden", "half"] = "prevalence"
    # torch CPU threads while training (None: torch's default). A fixed count makes a trained network the
    # same on any machine with the same CPU kernels: the thread count changes the order CPU kernels sum in.
    threads: int | None = Field(None, ge=1)


class ModelConfig(_Strict):
    """Scale knobs applied to the paper architectures (1.0 = the published network)."""

    width: float = Field(1.0, gt=0, le=4)
    depth: float = Field(1.0, gt=0, le=1)


class VictimConfig(_Strict):
    """The victim of one dataset: architecture, and optional per-dataset overrides."""

    arch: str
    width: float | None = Field(None, gt=0, le=4)  # overrides model.width for this victim
    depth: float | None = Field(None, gt=0, le=1)  # overrides model.depth for this victim
    difficulty: float | None = Field(None, ge=0, le=1)  # synthetic data difficulty; None = default
    data_root: str | None = None  # real data for this dataset only
    data_options: dict[str, Any] = Field(default_factory=dict)  # real-data reader options (docs/datasets.md)


class GMMDefenceConfig(_Strict):
    """GMM (Li, Pan & Zhu 2021): SSAT fine-tuning of the victim, then per-class Gaussians."""

    covariance: str = Field("tied", pattern="^(per-class|tied)$")  # tied: one within-class covariance
    ssat_epochs: int = Field(5, ge=0)  # 0 = detector only
    ssat_weight: float = Field(3.0, ge=0)  # weight of CE on the FGSM images (their code: 3)
    ssat_eps: tuple[float, float] = (0.001, 0.003)  # FGSM eps ~ U(low, high) per batch (their code)
    ssat_lr: float = Field(1e-4, gt=0)
    # where the offsets and threshold are set: clean validation images (the detector rejects about fpr of clean
    # images it has not seen) or the training images the Gaussians were fitted on
    calibrate_on: str = Field("val", pattern="^(val|train)$")


class EnsembleDefenceConfig(_Strict):
    """Ensemble (Paul et al. 2020): members of one architecture initialised from seeds seed, seed+1, ...,
    trained on the original images plus FGSM images (see medsec.defences.ensemble for the sources)."""

    members: int = Field(3, ge=1)
    arch: str | None = None  # None: the dataset's victim architecture (ResNet-20 for ct-slices)
    width: float | None = Field(None, gt=0, le=4)  # member width; None: the victim's scaling
    # static: FGSM images crafted beforehand and added to the training set (Paul et al.);
    # on_the_fly: FGSM crafted per batch against each member as it trains
    adversarial_training: str = Field("static", pattern="^(static|on_the_fly)$")
    adv_eps: float = Field(0.02, ge=0, le=1)  # FGSM eps of the adversarial images ([0, 1] pixels); 0: none
    adv_source: str = Field("victim", pattern="^(victim|plain)$")  # static: the plain victim crafts them
    adv_weight: float = Field(1.0, ge=0)  # on_the_fly: weight of CE on the FGSM images


class DenoiserDefenceConfig(_Strict):
    """Embedded denoiser (Xue et al. 2019): Gaussian noise sigma ~ U(0, noise_std), CE + L1 reconstruction +
    feature invariance (squared distance of the noised image's features to the clean image's)."""

    noise_std: float = Field(0.1, ge=0, le=1)
    rec_weight: float = Field(1.0, ge=0)
    feature_weight: float = Field(1.0, ge=0)
    ae_width: int = Field(16, ge=2)


class RBFDefenceConfig(_Strict):
    """RBF (Taghanaki et al. 2019): where the mapping layers sit in the ResNet ("stage" or "block")."""

    per: str = Field("stage", pattern="^(stage|block)$")


class DefencesConfig(_Strict):
    """Defence settings (see docs/defences.md); detectors reject `fpr` of clean training data."""

    fpr: float = Field(0.05, gt=0, lt=1)
    mgm_reg: float = Field(1e-3, ge=0)  # lambda = mgm_reg * mean feature variance
    covariance_shrinkage: str = Field("ledoit-wolf", pattern="^(none|ledoit-wolf)$")  # MGM/GMM covariance
    ocsvm_nu: float = Field(0.1, gt=0, le=1)
    iso_estimators: int = Field(100, ge=1)
    gmm: GMMDefenceConfig = GMMDefenceConfig()
    ensemble: EnsembleDefenceConfig = EnsembleDefenceConfig()
    denoiser: DenoiserDefenceConfig = DenoiserDefenceConfig()
    rbf: RBFDefenceConfig = RBFDefenceConfig()


class ReproduceConfig(_Strict):
    """Levy et al. Table 1/2 reproduction (``medsec reproduce``): how many test images are attacked and how
    hard the attacks try. The eps of each row is the original authors' (fixed in code, stated in the report)."""

    n_test: int = Field(128, gt=0)  # first n_test images of the test split, the same for every attack of a row
    steps: int = Field(50, gt=0)  # iterations of each adaptive attack
    restarts: int = Field(1, gt=0)  # random restarts of each adaptive attack (best per sample kept)
    original_steps: int = Field(10, gt=0)  # iterations of iterative original attacks (PGD/BIM)
    surrogates: int = Field(2, ge=1)  # limited-knowledge surrogate models (Denoiser row)
    curve_multipliers: list[float] = Field(default_factory=lambda: [0.5, 2.0])  # extra eps (x row eps) for curves
    n_curve: int = Field(32, gt=0)  # images per extra curve point
    n_samples: int = Field(3, ge=1, le=8)  # images in each row's sample strip
    rows: list[str] | None = None  # None: all eight Table-1 rows (ids as in medsec.studies.levy.ROWS)
    defence_epochs: int | None = Field(None, gt=0)  # epochs for networks the defences train (None: train.epochs)
    seeds: list[int] | None = None  # several seeds: victims, defences and attacks per seed; mean and range reported
    floor_rounds: int = Field(4, ge=1)  # the floor's APGD doubles its steps and adds a restart each round, at most
    floor_tol: float = Field(2.0, gt=0)  # this many rounds, until the floor moves by less than floor_tol points
    # rounds of the adaptive attack's escalation (medsec.studies.floor.converge); None: floor_rounds
    adaptive_rounds: int | None = Field(None, ge=1)
    # iterations of the limited-knowledge recipe's MI-DI(-TI) candidates; None: the recipe's max(steps, 100)
    transfer_steps: int | None = Field(None, gt=0)
    # per row id, config overrides (nested like this file) for that row's victim, defence and attacks, e.g.
    # {gmm-rsna: {data: {image_size: 224}}}: a row whose data must be seen at its paper's resolution
    row_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)


class TransferConfig(_Strict):
    """The transferability study (Bortsova et al. 2021): surrogate -> target across architecture,
    initialisation and development data. Every eps is in [0, 1] pixel units (their [-1, 1] 0.02 = 0.01)."""

    dataset: str = "chest2"
    pretrain_source: str = "rsna"  # the other embedded task 'pretrained' models start from
    difficulty: float | None = Field(None, ge=0, le=1)  # synthetic data difficulty (both tasks); None = default
    archs: list[str] = Field(default_factory=lambda: ["densenet121", "resnet50", "vgg16"])
    width: float = Field(0.125, gt=0, le=4)
    depth: float = Field(0.34, gt=0, le=1)
    n_train: int = Field(600, ge=20)  # development pool: d1 and d2 are its halves
    n_val: int = Field(160, ge=8)
    n_test: int = Field(200, ge=8)
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(16, gt=0)  # small batches: enough optimiser steps on a small d1
    inits: list[str] = Field(default_factory=lambda: ["random", "pretrained"])
    weights: dict[str, str] = Field(default_factory=dict)  # arch -> weights file: adds the init "file"
    data_variants: list[str] = Field(default_factory=lambda: ["d2", "d3", "d0"])
    data_variant_inits: list[str] = Field(default_factory=lambda: ["pretrained"])
    attacks: list[str] = Field(default_factory=lambda: ["fgsm", "pgd"])
    pgd_steps: int = Field(20, gt=0)
    pgd_alpha: float = Field(0.005, gt=0)  # Bortsova's step 0.01 in [-1, 1]
    eps: list[float] = Field(default_factory=lambda: [0.005, 0.01, 0.02])
    main_eps: float = Field(0.01, gt=0)  # the eps of the heat maps and findings
    n_eval: int = Field(100, gt=0)  # test images attacked
    whitebox: bool = True  # also attack each target with itself (the white-box reference)
    target_seed: int = 0
    surrogate_seed: int = 1
    pretrain_seed: int = 100


class SurveyConfig(_Strict):
    """The survey attacks (Sipola et al.'s list), each on several embedded datasets."""

    datasets: list[str] = Field(default_factory=lambda: ["chest2", "rsna"])
    n_eval: int = Field(100, gt=0)
    patch_sizes: list[float] = Field(default_factory=lambda: [0.01, 0.04, 0.09])  # fraction of the image area
    patch_steps: int = Field(150, gt=0)
    onepixel_pixels: list[int] = Field(default_factory=lambda: [1, 5, 20])
    onepixel_popsize: int = Field(40, ge=4)
    onepixel_iterations: int = Field(15, ge=0)
    onepixel_n_eval: int = Field(50, gt=0)
    uap_eps: list[float] = Field(default_factory=lambda: [0.01, 0.03])
    uap_epochs: int = Field(5, gt=0)
    backdoor_rates: list[float] = Field(default_factory=lambda: [0.01, 0.05])
    backdoor_target_class: int = 0
    backdoor_trigger: float = Field(0.1, gt=0)  # trigger side: fraction of the image side (< 1) or pixels
    fc_targets: int = Field(5, gt=0)
    fc_poisons: int = Field(5, gt=0)
    fc_steps: int = Field(100, gt=0)
    fc_eps: float = Field(0.1, gt=0, le=1)


class ExperimentConfig(_Strict):
    """One experiment: seeds, data, models, training, and the victims per dataset."""

    profile: str = "custom"
    seed: int = 0
    cache_dir: str | None = None  # default: $MEDSEC_CACHE or ~/.cache/medsec
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    model: ModelConfig = ModelConfig()
    victims: dict[str, VictimConfig] = Field(default_factory=dict)
    defences: DefencesConfig = DefencesConfig()
    reproduce: ReproduceConfig = ReproduceConfig()
    transfer: TransferConfig = TransferConfig()
    survey: SurveyConfig = SurveyConfig()

    def digest(self, *parts: str) -> str:
        """A short hash of the named sections (e.g. "data", "train", "model") for cache keys."""
        payload = {p: getattr(self, p).model_dump() for p in parts}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def with_overrides(self, overrides: dict[str, Any], source: str = "(overrides)") -> ExperimentConfig:
        """This config with nested `overrides` laid over it, validated (ConfigError names a bad key or value)."""
        return config_from_dict(_deep_update(self.model_dump(mode="json"), overrides), source)

    def to_yaml(self) -> str:
        """The config as YAML, as a run records it beside its results."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{loc}: {msg}")
    return f"invalid config {source}: " + "; ".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "(dict)") -> ExperimentConfig:
    """Validate a config dict; ConfigError names every wrong key or value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(profile_or_path: str | Path = "quick", overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """A built-in profile by name (quick, full, full-smoke) or a YAML file, with optional nested overrides."""
    name = str(profile_or_path)
    base, derived = DERIVED_PROFILES.get(name, (name, None))
    if name in PROFILES:
        text = resources.files("medsec.configs").joinpath(f"{base}.yaml").read_text(encoding="utf-8")
        source = f"profile {name!r}"
    else:
        path = Path(name)
        if path.suffix not in (".yaml", ".yml"):
            raise ConfigError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)} or a .yaml file")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        source = str(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {source} is not valid YAML: {e}") from None
    if derived is not None and isinstance(raw, dict):
        raw = {**_deep_update(raw, derived), "profile": name}
    if overrides:
        raw = _deep_update(raw, overrides)
    return config_from_dict(raw, source)


def cli_config(profile: str, *, cache_dir: str | None = None, data_root: str | None = None, seed: int | None = None,
               device: str | None = None, extra: dict[str, Any] | None = None) -> ExperimentConfig:
    """A profile (or YAML file) with the options every command shares laid over it (None = keep the file's)."""
    over: dict[str, Any] = dict(extra or {})
    if cache_dir:
        over["cache_dir"] = cache_dir
    if data_root:
        over["data"] = {**over.get("data", {}), "data_root": data_root}
    if seed is not None:
        over["seed"] = seed
    if device:
        over["device"] = device
    return load_config(profile, over)
