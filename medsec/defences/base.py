"""The defence protocol: fit on clean training data, predict logits, and (detectors) score and detect.

Every defence is an ``nn.Module`` whose ``forward`` is ``predict``, so any attack can be run against the
defended model directly (``PGD(...)(defence, x, y)``). Detectors add

- ``score(x)``: a differentiable torch tensor (N,), higher = more suspicious;
- ``detect(x)``: ``score(x) > threshold`` (True = rejected as adversarial), with ``threshold`` fixed at
  fit time so that a fraction ``fpr`` (default 5%) of the clean *training* data is rejected, as Li & Zhu
  do ("keep 95% of the training data"). Nothing ever refits it on adversarial data.

What a defence exposes to adaptive attacks is listed in ``EXPOSES`` (attribute names, documented on each
class), and ``exposed()`` returns them as a dict, so attacks read what is there instead of testing class
names. The names used across defences:

- ``classifier``: the network mapping images to logits that the defence protects (or is);
- ``feature_extractor``: images -> (N, D) hidden features the detector models;
- ``mean`` / ``cholesky``: the Gaussian of a single-Gaussian detector (MGM);
- ``gaussians``: a list of per-class ``Gaussian`` modules (GMM);
- ``members``: the ensemble's member networks;
- ``denoiser``: the denoising auto-encoder (images -> reconstructed images);
- ``rbf_layers``: the kernelized manifold mapping layers inside the network;
- ``score``, ``threshold``: the detector's differentiable suspicion score and its fixed threshold.

Saving writes weights and fitted statistics with ``torch.save`` and reads them back with
``weights_only=True`` (no pickled code): every network is rebuilt from a JSON spec (see ``nets``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from medsec.config import TrainConfig
from medsec.data.base import MedicalDataset
from medsec.defences.nets import build_network, network_spec
from medsec.errors import MedsecError
from medsec.metrics import threshold_at_fpr
from medsec.metrics.system import handled as system_handled
from medsec.models.checkpoint import load_saved
from medsec.models.inference import batched, module_device
from medsec.paths import atomic_path

SAVE_FORMAT = 1
REGISTRY: dict[str, type[Defence]] = {}


class NotFittedError(MedsecError):
    """A defence was used (score, detect, predict) before `fit` or `load`."""


def register_defence(cls: type[Defence]) -> type[Defence]:
    """Class decorator: make a defence loadable by its `kind` name."""
    REGISTRY[cls.kind] = cls
    return cls


def exposed(defence: Any) -> dict[str, Any]:
    """What a defence exposes to adaptive attacks (``defence.exposed()``), or {} when it exposes nothing."""
    fn = getattr(defence, "exposed", None)
    if not callable(fn):
        return {}
    try:
        got = fn()
    except Exception as e:  # a user defence whose exposed() fails is still attackable as a black box
        raise MedsecError(f"{type(defence).__name__}.exposed() failed: {e}") from e
    if not isinstance(got, dict):
        raise MedsecError(f"{type(defence).__name__}.exposed() must return a dict, got {type(got).__name__}")
    return got


def is_detector(defence: Any) -> bool:
    """True when the defence rejects inputs (it has ``detect(x)``)."""
    return bool(getattr(defence, "is_detector", False)) and callable(getattr(defence, "detect", None))


def rejected(defence: Any, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N,) bool on x's device: inputs the defence's detector rejects (all False without a detector)."""
    if not is_detector(defence):
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return batched(lambda xb: defence.detect(xb).bool().reshape(-1), x, batch_size).to(x.device)


class Defence(nn.Module):
    """Base of every defence: ``fit(data)``, ``predict(x) -> logits``, ``save``/``load_defence``."""

    kind: ClassVar[str] = "defence"
    is_detector: ClassVar[bool] = False
    EXPOSES: ClassVar[tuple[str, ...]] = ("classifier",)

    def __init__(self) -> None:
        super().__init__()
        self.fitted = False

    # -- protocol ------------------------------------------------------------------------------------------
    def fit(self, data: MedicalDataset, **kwargs: Any) -> Defence:
        """Fit on the clean training split of `data` (and validation for early stopping); returns self."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the defended model for images x in [0, 1] (differentiable)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def exposed(self) -> dict[str, Any]:
        """The differentiable parts this defence exposes to adaptive attacks, by documented name."""
        return {name: getattr(self, name) for name in self.EXPOSES}

    def _check_fitted(self, what: str) -> None:
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__}.{what}() called before fit(): fit the defence on clean "
                                 "training data (or load a saved one) first")

    # -- save / load ---------------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments (including network specs) that rebuild an unfitted copy."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Defence:
        """An unfitted defence with the networks and settings of `spec`."""
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Write the fitted defence atomically (spec + weights + fitted statistics)."""
        self._check_fitted("save")
        with atomic_path(path) as tmp:
            torch.save({"format": SAVE_FORMAT, "kind": self.kind, "spec": self.spec(),
                        "state": {k: v.detach().cpu() for k, v in self.state_dict().items()}}, tmp)

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict whose fitted buffers may differ in shape from the unfitted placeholders."""
        own = dict(self.named_buffers())
        for name, value in state.items():
            if name in own and own[name].shape != value.shape:
                mod_name, _, buf = name.rpartition(".")
                mod = self.get_submodule(mod_name) if mod_name else self
                mod._buffers[buf] = torch.empty_like(value)
        self.load_state_dict(state)
        self.fitted = True
        self.eval()


def load_defence(path: str | Path, map_location: str | torch.device = "cpu") -> Defence:
    """Rebuild a defence written by `Defence.save` (any registered kind), fitted and in eval mode."""
    p = Path(path)
    blob = load_saved(p, "defence file", map_location)
    kind = blob.get("kind")
    if kind not in REGISTRY:
        raise MedsecError(f"defence file {p} holds an unknown defence kind {kind!r}; known: {', '.join(REGISTRY)}")
    try:
        d = REGISTRY[kind].from_spec(blob["spec"])
        d._load_state(blob["state"])
    except MedsecError:
        raise
    except Exception as e:
        raise MedsecError(f"defence file {p} does not match its {kind} spec: {e}") from e
    return d


class Detector(Defence):
    """A defence that rejects inputs: ``score`` (differentiable, higher = more suspicious), ``detect``.

    Subclasses implement ``_score(x)`` and ``_fit_detector(x_train, y_train)``; the threshold is set
    here from the clean training scores at false-positive rate ``fpr``.
    """

    is_detector: ClassVar[bool] = True
    threshold: torch.Tensor

    def __init__(self, fpr: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < fpr < 1.0:
            raise MedsecError(f"fpr must be in (0, 1), got {fpr}")
        self.fpr = float(fpr)
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Suspicion score (N,) for images x; differentiable where the detector is."""
        self._check_fitted("score")
        return self._score(x)

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """True where x is rejected as adversarial (score above the threshold fixed at fit time)."""
        self._check_fitted("detect")
        with torch.no_grad():
            return self._score(x) > self.threshold

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def calibrate(self, x_clean_train: torch.Tensor, batch_size: int = 256) -> float:
        """Fix the threshold so a fraction `fpr` of these clean training images is rejected."""
        return self._set_threshold(batched(self._score, x_clean_train, batch_size, module_device(self), cpu=True))

    def _set_threshold(self, clean_scores: torch.Tensor) -> float:
        """threshold = the (1 - fpr) quantile of clean training scores (flag when score > threshold)."""
        self.threshold = torch.tensor(threshold_at_fpr(clean_scores, self.fpr), dtype=torch.float32)
        return float(self.threshold)


class ClassifierDetector(Detector):
    """A detector beside an unchanged classifier that has ``features(x)``: predictions are the classifier's,
    and the features it reads are exposed as ``feature_extractor`` (MGM, ISO, OCSVM, GMM)."""

    classifier: Any  # a Classifier-like nn.Module (features, forward_features, head)

    @property
    def feature_extractor(self) -> Any:
        """images -> (N, D) final hidden features (differentiable)."""
        return self.classifier.features

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted("predict")
        return self.classifier(x)


class TrainedNetworkDefence(Defence):
    """A defence that is a network of its own, trained on the clean data by `fit` (RBF, Denoiser)."""

    EXPOSES: ClassVar[tuple[str, ...]] = ("classifier",)
    factory: ClassVar[str] = ""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    @classmethod
    def build(cls, **args: Any) -> TrainedNetworkDefence:
        """An untrained defence whose network is built by this defence's factory with `args`."""
        return cls(build_network({"factory": cls.factory, "args": args}))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted("predict")
        return self.classifier(x)

    def _extra_loss(self) -> Any:
        return None

    def fit(self, data: MedicalDataset, train: TrainConfig | None = None, seed: int = 0,  # type: ignore[override]
            device: str | torch.device = "cpu", **kwargs: Any) -> TrainedNetworkDefence:
        """Train the network on data.train (early stopping on data.val) with the foundation's trainer."""
        from medsec.models.training import train_model

        self.train_result = train_model(self.classifier, data, train or TrainConfig(), seed=seed, device=device,
                                        description=f"{self.kind} defence", extra_loss=self._extra_loss())
        self.fitted = True
        self.eval()
        return self

    def spec(self) -> dict[str, Any]:
        return {"classifier": network_spec(self.classifier)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TrainedNetworkDefence:
        return cls(build_network(spec["classifier"]))


# --- metrics combining detector and classifier ----------------------------------------------------------


def handled(defence: Defence, x: torch.Tensor, y: torch.Tensor, *, adversarial: bool,
            batch_size: int = 256) -> torch.Tensor:
    """Per input, whether the defended system handles it correctly (Levy et al.'s accuracy for detectors; see
    :mod:`medsec.metrics.system`). Classification (N,) labels only."""
    dev = module_device(defence)
    out = batched(defence.predict, x, batch_size, dev, cpu=True)
    rej = rejected(defence, x.to(dev), batch_size).cpu() if is_detector(defence) else None
    return system_handled(out, y.cpu(), "classification", adversarial=adversarial, rejected=rej).bool()


def defended_accuracy(defence: Defence, x: torch.Tensor, y: torch.Tensor, *, adversarial: bool) -> float:
    """Fraction of inputs the defended system handles correctly (see `handled`)."""
    return float(handled(defence, x, y, adversarial=adversarial).float().mean())


def adversarial_risk(defence: Defence, x: torch.Tensor, y: torch.Tensor, *, adversarial: bool = True) -> float:
    """Li, Pan & Zhu's adversarial risk as defined here: the fraction of inputs the system gets wrong.

    For adversarial inputs: accepted by the detector AND misclassified (the attack got through).
    For clean inputs: rejected OR misclassified. Hence risk = 1 - `defended_accuracy`, which is how Levy
    et al. turn it into accuracy (their Table 1 shows 100 - risk). Without a detector it is the error rate.
    """
    return 1.0 - defended_accuracy(defence, x, y, adversarial=adversarial)
