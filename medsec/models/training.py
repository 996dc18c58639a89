"""Training victims: Adam, per-task loss, validation-based early stopping, explicit seeds."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.losses import DiceCELoss
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from medsec.config import TrainConfig
from medsec.data.base import MedicalDataset, Split, Task
from medsec.errors import MedsecError
from medsec.metrics import PRIMARY_METRIC, task_metrics
from medsec.models.inference import batched

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy; return a torch Generator for data order."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def task_loss(task: Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of a task: CE, BCE-with-logits, or Dice + CE for segmentation."""
    if task == "classification":
        return nn.CrossEntropyLoss()
    if task == "multilabel":
        return nn.BCEWithLogitsLoss()
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    return lambda logits, mask: dice_ce(logits, mask.unsqueeze(1))


def augment_batch(x: torch.Tensor, y: torch.Tensor, task: Task, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flips and shifts of up to 1/16 of the size (masks move with their images)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if task == "segmentation":
        y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
    m = max(1, x.shape[-1] // 16)
    dx, dy = (int(v) for v in torch.randint(-m, m + 1, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    if task == "segmentation":
        y = torch.roll(y, shifts=(dy, dx), dims=(-2, -1))
    return x, y


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """Model outputs for `images` in eval mode, batched, on CPU."""
    was_training = model.training
    model.eval()
    try:
        return batched(lambda xb: model(xb).float(), images, batch_size, device, cpu=True)
    finally:
        model.train(was_training)


def evaluate_split(model: nn.Module, task: Task, split: Split, device: str | torch.device = "cpu") -> dict[str, float]:
    """Clean metrics of `model` on a split."""
    return task_metrics(task, predict(model, split.images(), device=device), split.target_tensor())


@dataclass
class TrainResult:
    """What training did: epochs run, best validation score, history of validation scores."""

    epochs: int
    best_epoch: int
    best_val: float
    history: list[float] = field(default_factory=list)
    operating_point: list[float] | None = None  # multi-label: the logit thresholds moved to 0 (per output)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch CPU threads (None: leave torch's setting), restoring the count after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def decision_offsets(logits: torch.Tensor, targets: torch.Tensor, rule: str) -> torch.Tensor:
    """Per-output logit thresholds of a multi-label classifier, chosen on validation outputs.

    rule "prevalence": each finding is called positive on as many validation images as carry it (the
    threshold is the (1 - prevalence) quantile of its logits), the usual way to put a multi-label chest X-ray
    model with rare findings at an operating point: at probability 0.5 such a model calls almost nothing
    positive. "youden": the ROC point maximising sensitivity + specificity. "half": probability 0.5 (logit 0).
    A finding without positives or negatives in the validation split keeps logit 0."""
    if rule not in ("prevalence", "youden", "half"):
        raise MedsecError(f"unknown operating point rule {rule!r}: prevalence, youden or half")
    z, t = logits.double().cpu(), (targets.cpu() > 0.5)
    out = torch.zeros(z.shape[1], dtype=torch.float64)
    if rule == "half":
        return out.float()
    for k in range(z.shape[1]):
        pos = int(t[:, k].sum())
        if pos == 0 or pos == len(t):
            continue
        if rule == "prevalence":
            out[k] = torch.quantile(z[:, k], 1 - pos / len(t))
        else:  # youden: positive from the best ROC point's logit up, so the threshold sits just below it
            order = torch.argsort(z[:, k], descending=True)
            tk = t[order, k].double()
            tpr, fpr = tk.cumsum(0) / pos, (1 - tk).cumsum(0) / (len(t) - pos)
            out[k] = z[order[int(torch.argmax(tpr - fpr))], k] - 1e-6
    return out.float()


def set_operating_point(model: nn.Module, split: Split, rule: str, device: str | torch.device = "cpu") -> list[float]:
    """Move a multi-label classifier's decisions (logit > 0) to `rule`'s operating point on `split` by
    shifting its output layer's bias; returns the logit thresholds it subtracted. Scores, rankings and
    AUROC are unchanged; only which findings count as present moves."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise MedsecError(f"{type(model).__name__} has no linear output layer `head` with a bias to set an "
                          "operating point on; use train.operating_point: half")
    offsets = decision_offsets(predict(model, split.images(), device=device), split.target_tensor(), rule)
    with torch.no_grad():
        head.bias.sub_(offsets.to(head.bias.device, head.bias.dtype))
    return [round(float(o), 4) for o in offsets]


def train_model(
    model: nn.Module,
    data: MedicalDataset,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    description: str = "training",
    extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    train_set: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainResult:
    """Train `model` on data.train, keeping the weights with the best validation score.

    extra_loss(model, x, y) is added to the task loss each step (defences use it for adversarial terms).
    train_set: (images in [0, 1], targets) to train on instead of data.train (a defence's augmented
    training set); validation still uses data.val.
    Multi-label models end at cfg.operating_point (:func:`set_operating_point`, on data.val). Runs with
    cfg.threads torch threads.
    """
    with torch_threads(cfg.threads):
        return _train(model, data, cfg, seed=seed, device=device, description=description, extra_loss=extra_loss,
                      train_set=train_set)


def _train(model: nn.Module, data: MedicalDataset, cfg: TrainConfig, *, seed: int, device: str | torch.device,
           description: str, extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None,
           train_set: tuple[torch.Tensor, torch.Tensor] | None) -> TrainResult:
    task = data.info.task
    gen = seed_everything(seed)
    model.to(device)
    loss_fn = task_loss(task)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    x_all, y_all = train_set if train_set is not None else (data.train.images(), data.train.target_tensor())
    if len(x_all) != len(y_all):
        raise MedsecError(f"train_set has {len(x_all)} images but {len(y_all)} targets")
    n = len(x_all)
    key = PRIMARY_METRIC[task]
    best, best_state, best_epoch, bad = -float("inf"), copy.deepcopy(model.state_dict()), 0, 0
    history: list[float] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
                  TextColumn("val {task.fields[val]}"), TimeElapsedColumn(), transient=True) as prog:
        bar = prog.add_task(description, total=cfg.epochs, val="-")
        epoch = 0
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                if len(idx) < 2:
                    continue  # batch norm needs two samples
                x, y = x_all[idx], y_all[idx]
                if cfg.augment:
                    x, y = augment_batch(x, y, task, gen)
                x, y = x.to(device), y.to(device)
                loss = loss_fn(model(x), y)
                if extra_loss is not None:
                    loss = loss + extra_loss(model, x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
            val = evaluate_split(model, task, data.val, device)[key]
            history.append(val)
            prog.update(bar, advance=1, val=f"{key}={val:.3f}")
            if val > best:
                best, best_state, best_epoch, bad = val, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    log.info("%s: best val %s=%.3f at epoch %d of %d", description, key, best, best_epoch, epoch)
    offsets = None
    if task == "multilabel" and cfg.operating_point != "half":
        offsets = set_operating_point(model, data.val, cfg.operating_point, device)
    return TrainResult(epochs=epoch, best_epoch=best_epoch, best_val=best, history=history,
                       operating_point=offsets)
