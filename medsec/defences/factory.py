"""Defences of an experiment: built for a dataset's victim, fitted on its clean training data, cached.

``get_defence(cfg, "mgm", "chest14")`` returns the fitted defence (from the cache when the same
config, dataset and seed were fitted before). Settings come from ``cfg.defences``; networks trained by a
defence use ``cfg.train`` and the victim's architecture and scaling. A damaged cache entry is refitted.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from medsec.config import ExperimentConfig
from medsec.defences.base import Defence, load_defence
from medsec.defences.denoiser import Denoiser
from medsec.defences.detectors import ISO, MGM, OCSVM
from medsec.defences.ensemble import Ensemble
from medsec.defences.gmm import GMM
from medsec.defences.rbf import RBF
from medsec.errors import MedsecError
from medsec.models.victims import Victim, get_victim, resolve_device
from medsec.paths import cache_root
from medsec.provenance import code_digest

log = logging.getLogger(__name__)

DEFENCE_NAMES = ("mgm", "iso", "ocsvm", "gmm", "ensemble", "denoiser", "rbf")


@dataclass
class FittedDefence:
    """A fitted defence with the victim it protects (or replaces) and where it is cached."""

    defence: Defence
    victim: Victim
    path: Path
    from_cache: bool
    seconds: float


def _build(cfg: ExperimentConfig, name: str, victim: Victim, seed: int) -> Defence:
    dc = cfg.defences
    meta = victim.meta
    net_args = {"in_channels": meta["in_channels"], "num_outputs": meta["num_outputs"], "task": meta["task"],
                "width": meta["width"], "depth": meta["depth"], "mean": meta["mean"], "std": meta["std"]}
    if name == "mgm":
        return MGM.from_victim(victim, fpr=dc.fpr, reg=dc.mgm_reg, shrinkage=dc.covariance_shrinkage)
    if name == "iso":
        return ISO.from_victim(victim, fpr=dc.fpr, n_estimators=dc.iso_estimators, seed=seed)
    if name == "ocsvm":
        return OCSVM.from_victim(victim, fpr=dc.fpr, nu=dc.ocsvm_nu)
    if name == "gmm":
        g = dc.gmm
        return GMM.from_victim(victim, fpr=dc.fpr, reg=dc.mgm_reg, shrinkage=dc.covariance_shrinkage,
                               covariance=g.covariance, ssat_epochs=g.ssat_epochs,
                               ssat_weight=g.ssat_weight, ssat_eps=g.ssat_eps, ssat_lr=g.ssat_lr,
                               calibrate_on=g.calibrate_on)
    if name == "ensemble":
        e = dc.ensemble
        args = {**net_args, "arch": e.arch or meta["arch"]}
        if e.width is not None:
            args["width"] = e.width
        spec = {"factory": "build_model", "args": args}
        return Ensemble.build([spec] * e.members, adv_eps=e.adv_eps, adv_weight=e.adv_weight,
                              adversarial_training=e.adversarial_training, adv_source=e.adv_source,
                              crafter=victim.model if e.adv_source == "victim" else None)
    if name == "denoiser":
        d = dc.denoiser
        return Denoiser.build(noise_std=d.noise_std, rec_weight=d.rec_weight, feature_weight=d.feature_weight,
                              arch=meta["arch"], ae_width=d.ae_width, **net_args)
    if name == "rbf":
        return RBF.build(per=dc.rbf.per, **net_args)
    raise MedsecError(f"unknown defence {name!r}; available: {', '.join(DEFENCE_NAMES)}")


def defence_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """cfg with ``train.epochs`` set to ``reproduce.defence_epochs`` when that is given: the training budget
    of the networks the defences and the attacker train (ensemble members, denoisers, RBF networks,
    surrogates). ``get_defence`` applies it, so ``medsec defend`` and the studies fit the same defence."""
    epochs = cfg.reproduce.defence_epochs
    if epochs is None or epochs == cfg.train.epochs:
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})


def get_defence(cfg: ExperimentConfig, name: str, dataset: str, *, seed: int | None = None,
                victim: Victim | None = None) -> FittedDefence:
    """The defence `name` for `dataset`'s victim, fitted on clean training data (cached). Networks the
    defence trains use ``cfg.train`` with ``reproduce.defence_epochs`` (see `defence_config`); the victim
    is the one ``cfg`` trains."""
    if name not in DEFENCE_NAMES:
        raise MedsecError(f"unknown defence {name!r}; available: {', '.join(DEFENCE_NAMES)}")
    seed = cfg.seed if seed is None else seed
    victim = victim or get_victim(cfg, dataset)
    cfg = defence_config(cfg)
    key = cfg.digest("data", "train", "model", "defences") + \
        f"{victim.checkpoint.name}|{name}|{seed}|code-{code_digest('data', 'models', 'defences', 'attacks')}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = cache_root(cfg.cache_dir) / "defences" / f"{name}-{dataset}-s{seed}-{digest}.pt"
    device = resolve_device(cfg.device)
    if path.exists():
        try:
            return FittedDefence(load_defence(path).to(device), victim, path, True, 0.0)
        except MedsecError as e:
            log.warning("%s; refitting it", e)
            path.unlink(missing_ok=True)
    defence = _build(cfg, name, victim, seed).to(device)
    t0 = time.perf_counter()
    defence.fit(victim.data, train=cfg.train, seed=seed, device=device)
    seconds = time.perf_counter() - t0
    try:
        defence.save(path)
    except OSError as e:
        log.warning("could not cache the %s defence at %s: %s", name, path, e)
    return FittedDefence(defence, victim, path, False, seconds)
