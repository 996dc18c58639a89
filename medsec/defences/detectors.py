"""Feature-space detectors on a victim's final hidden representation: MGM (Li & Zhu 2020), and the
IsolationForest (ISO) and One-class SVM (OCSVM) competitors of their Table 1.

All three take the classifier's ``features(x)`` (the pooled final hidden layer, e.g. 1024-d for a full
DenseNet-121), are fitted on clean training images only, and reject an input when its score exceeds the
threshold that rejects ``fpr`` (5%) of the clean training data.

ISO and OCSVM are fitted with scikit-learn and then re-expressed in torch (the OCSVM's support vectors
and dual coefficients; the isolation trees as arrays), so they save without pickles, score on any device,
and the OCSVM score is differentiable. ISO's score is piecewise constant (no useful gradient).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medsec.data.base import MedicalDataset
from medsec.defences.base import ClassifierDetector, register_defence
from medsec.defences.gaussian import Gaussian
from medsec.defences.nets import attach_spec, build_network, network_spec, spec_from_meta
from medsec.errors import MedsecError
from medsec.models.inference import batched, module_device
from medsec.models.victims import Victim


class FeatureDetector(ClassifierDetector):
    """Detector on ``classifier.features(x)``; prediction is the unchanged classifier.

    Exposes ``classifier``, ``feature_extractor`` (images -> (N, D) features), ``score``, ``threshold``.
    """

    EXPOSES: ClassVar[tuple[str, ...]] = ("classifier", "feature_extractor", "score", "threshold")

    def __init__(self, classifier: nn.Module, fpr: float = 0.05, batch_size: int = 256) -> None:
        super().__init__(fpr)
        if not callable(getattr(classifier, "features", None)):
            raise MedsecError(f"{type(self).__name__} needs a classifier with a features(x) method "
                              f"(a medsec.models.Classifier), got {type(classifier).__name__}")
        self.classifier = classifier
        self.batch_size = batch_size

    @classmethod
    def from_victim(cls, victim: Victim, **kwargs: Any) -> FeatureDetector:
        """Wrap a foundation `Victim` (its model and checkpoint metadata)."""
        attach_spec(victim.model, spec_from_meta(victim.meta))
        return cls(victim.model, **kwargs)

    def fit(self, data: MedicalDataset, **kwargs: Any) -> FeatureDetector:
        """Fit the detector on features of the clean training images and fix the threshold."""
        self.eval()
        feats = batched(self.classifier.features, data.train.images(), self.batch_size, module_device(self), cpu=True)
        self.fit_features(feats)
        return self

    def fit_features(self, feats: torch.Tensor) -> FeatureDetector:
        """Fit on precomputed clean training features (n, D) and fix the threshold from them."""
        if feats.ndim != 2 or len(feats) < 2:
            raise MedsecError(f"need (n >= 2, D) training features, got shape {tuple(feats.shape)}")
        dev = module_device(self)
        self._fit_features(feats.detach().float().cpu())
        self.to(dev)  # fitted statistics join the classifier's device
        scores = torch.cat([self.score_features(feats[i:i + 4096].to(dev)).detach().cpu()
                            for i in range(0, len(feats), 4096)])
        self._set_threshold(scores)
        self.fitted = True
        return self

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_features(self.classifier.features(x))

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Suspicion score (N,) of (N, D) features (higher = more suspicious)."""
        raise NotImplementedError

    def _fit_features(self, feats: torch.Tensor) -> None:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    def spec(self) -> dict[str, Any]:
        return {"classifier": network_spec(self.classifier), "fpr": self.fpr, "batch_size": self.batch_size,
                **self._params()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FeatureDetector:
        spec = dict(spec)
        net = build_network(spec.pop("classifier"))
        return cls(net, **spec)


@register_defence
class MGM(FeatureDetector):
    """Li & Zhu's multivariate Gaussian model: score = -log N(f(x); mu, Sigma) via the Cholesky factor.

    reg/relative: the covariance regulariser lambda (see medsec.defences.gaussian; default
    lambda = 1e-3 * mean feature variance); shrinkage: "none" or "ledoit-wolf" (``Gaussian.fit``). Also exposes ``mean`` (mu, float32: the centre Levy et al.'s
    L2 stand-in ||f(x) - mu||^2 pulls towards), ``cholesky`` (L, Sigma = L L^T) and ``gaussian``.
    """

    kind: ClassVar[str] = "mgm"
    EXPOSES: ClassVar[tuple[str, ...]] = FeatureDetector.EXPOSES + ("mean", "cholesky", "gaussian")

    def __init__(self, classifier: nn.Module, fpr: float = 0.05, batch_size: int = 256, reg: float = 1e-3,
                 relative: bool = True, shrinkage: str = "ledoit-wolf") -> None:
        super().__init__(classifier, fpr, batch_size)
        self.reg, self.relative, self.shrinkage = float(reg), bool(relative), str(shrinkage)
        self.gaussian = Gaussian()

    @property
    def mean(self) -> torch.Tensor:
        """mu of the clean training features (float32)."""
        return self.gaussian.mean.float()

    @property
    def cholesky(self) -> torch.Tensor:
        """Lower Cholesky factor L of the regularised covariance (float64)."""
        return self.gaussian.cholesky

    def _fit_features(self, feats: torch.Tensor) -> None:
        self.gaussian.fit(feats, self.reg, self.relative, self.shrinkage)

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        return -self.gaussian.log_prob(feats)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log N(f(x); mu, Sigma) per image (the quantity Li & Zhu threshold)."""
        self._check_fitted("log_likelihood")
        return self.gaussian.log_prob(self.classifier.features(x))

    def _params(self) -> dict[str, Any]:
        return {"reg": self.reg, "relative": self.relative, "shrinkage": self.shrinkage}


@register_defence
class OCSVM(FeatureDetector):
    """One-class SVM (RBF kernel) on the features; score = -(decision function), differentiable.

    nu: upper bound on the fraction of training outliers (scikit-learn's meaning; default 0.1 — the
    paper does not say; the 5%-FPR threshold is set separately). gamma: kernel width, "scale" =
    1 / (D * var(features)) as scikit-learn. Exposes ``support_vectors``, ``dual_coef``, ``intercept``, ``gamma``.
    """

    kind: ClassVar[str] = "ocsvm"
    support_vectors: torch.Tensor
    dual_coef: torch.Tensor
    intercept: torch.Tensor
    gamma_value: torch.Tensor

    def __init__(self, classifier: nn.Module, fpr: float = 0.05, batch_size: int = 256, nu: float = 0.1,
                 gamma: str | float = "scale") -> None:
        super().__init__(classifier, fpr, batch_size)
        if not 0.0 < nu <= 1.0:
            raise MedsecError(f"OCSVM nu must be in (0, 1], got {nu}")
        self.nu, self.gamma = float(nu), gamma
        self.register_buffer("support_vectors", torch.empty(0, 0))
        self.register_buffer("dual_coef", torch.empty(0))
        self.register_buffer("intercept", torch.tensor(0.0))
        self.register_buffer("gamma_value", torch.tensor(float("nan")))

    def _fit_features(self, feats: torch.Tensor) -> None:
        from sklearn.svm import OneClassSVM

        svm = OneClassSVM(kernel="rbf", nu=self.nu, gamma=self.gamma).fit(feats.numpy().astype(np.float64))
        self.support_vectors = torch.from_numpy(svm.support_vectors_).float()
        self.dual_coef = torch.from_numpy(svm.dual_coef_.ravel()).float()
        self.intercept = torch.tensor(float(svm.intercept_[0]))
        self.gamma_value = torch.tensor(float(svm._gamma))

    def decision_function(self, feats: torch.Tensor) -> torch.Tensor:
        """scikit-learn's decision function sum_i a_i exp(-gamma ||f - sv_i||^2) + b (positive = inlier)."""
        f = feats.float()
        d2 = torch.cdist(f, self.support_vectors).pow(2)
        return torch.exp(-self.gamma_value * d2) @ self.dual_coef + self.intercept

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        return -self.decision_function(feats)

    def _params(self) -> dict[str, Any]:
        return {"nu": self.nu, "gamma": self.gamma}


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): average path length of an unsuccessful BST search (Liu et al.; scikit-learn's definition)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@register_defence
class ISO(FeatureDetector):
    """Isolation Forest on the features; score s = 2^(-E[h(f)] / c(psi)) (Liu et al.; near 1 = anomalous).

    Fitted by scikit-learn (n_estimators trees on max_samples = min(256, n) points, seeded), then the trees
    are stored as arrays (children, split feature, threshold, leaf path length) and evaluated in torch.
    The score equals -IsolationForest.score_samples. It is piecewise constant: no gradient flows.
    """

    kind: ClassVar[str] = "iso"
    left: torch.Tensor
    right: torch.Tensor
    split_feature: torch.Tensor
    split_threshold: torch.Tensor
    leaf_depth: torch.Tensor
    norm_c: torch.Tensor

    def __init__(self, classifier: nn.Module, fpr: float = 0.05, batch_size: int = 256, n_estimators: int = 100,
                 seed: int = 0) -> None:
        super().__init__(classifier, fpr, batch_size)
        self.n_estimators, self.seed = int(n_estimators), int(seed)
        for name in ("left", "right", "split_feature"):
            self.register_buffer(name, torch.empty(0, 0, dtype=torch.long))
        self.register_buffer("split_threshold", torch.empty(0, 0))
        self.register_buffer("leaf_depth", torch.empty(0, 0, dtype=torch.float64))
        self.register_buffer("norm_c", torch.tensor(float("nan"), dtype=torch.float64))

    def _fit_features(self, feats: torch.Tensor) -> None:
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(feats.numpy())
        trees = [(est.tree_, np.asarray(fs)) for est, fs in zip(forest.estimators_, forest.estimators_features_,
                                                                 strict=True)]
        m = max(t.node_count for t, _ in trees)
        t_n = len(trees)
        left = np.full((t_n, m), -1, np.int64)
        right = np.full((t_n, m), -1, np.int64)
        feat = np.zeros((t_n, m), np.int64)
        thr = np.zeros((t_n, m), np.float32)
        depth_val = np.zeros((t_n, m), np.float64)
        for i, (t, fs) in enumerate(trees):
            k = t.node_count
            left[i, :k], right[i, :k] = t.children_left, t.children_right
            internal = t.children_left >= 0
            feat[i, :k] = np.where(internal, fs[np.maximum(t.feature, 0)], 0)
            thr[i, :k] = t.threshold
            depth = np.zeros(k)
            for node in range(k):  # nodes are numbered parents first
                if internal[node]:
                    depth[t.children_left[node]] = depth[node] + 1
                    depth[t.children_right[node]] = depth[node] + 1
            depth_val[i, :k] = depth + _average_path_length(t.n_node_samples)
        self.left, self.right = torch.from_numpy(left), torch.from_numpy(right)
        self.split_feature, self.split_threshold = torch.from_numpy(feat), torch.from_numpy(thr)
        self.leaf_depth = torch.from_numpy(depth_val)
        self.norm_c = torch.tensor(float(_average_path_length(np.array([forest.max_samples_]))[0]),
                                   dtype=torch.float64)

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        f = feats.detach().float()
        t_n, n = self.left.shape[0], f.shape[0]
        node = torch.zeros(t_n, n, dtype=torch.long, device=f.device)
        rows = torch.arange(t_n, device=f.device).unsqueeze(1).expand(t_n, n)
        cols = torch.arange(n, device=f.device).unsqueeze(0).expand(t_n, n)
        for _ in range(self.left.shape[1]):
            lft = self.left[rows, node]
            internal = lft >= 0
            if not bool(internal.any()):
                break
            val = f[cols, self.split_feature[rows, node]]
            nxt = torch.where(val <= self.split_threshold[rows, node], lft, self.right[rows, node])
            node = torch.where(internal, nxt, node)
        mean_depth = self.leaf_depth[rows, node].mean(0)
        return torch.pow(2.0, -mean_depth / self.norm_c).float()

    def _params(self) -> dict[str, Any]:
        return {"n_estimators": self.n_estimators, "seed": self.seed}


DETECTORS: dict[str, type[FeatureDetector]] = {"iso": ISO, "ocsvm": OCSVM, "mgm": MGM}
