"""The embedded stand-in behaves like the paper's data under attack: a victim trained on a calibrated phantom
falls to its row's original attack (FGSM) at the row's eps. A tiny victim and a few images keep it fast; the
full measurement per row is benchmarks/standin_calibration.py (table in docs/synthetic.md)."""

from __future__ import annotations

import torch

from medsec.attacks import FGSM
from medsec.config import TrainConfig
from medsec.data.registry import generate_synthetic
from medsec.metrics import dice
from medsec.models.networks import build_model
from medsec.models.training import train_model
from medsec.studies.levy import ROWS


def test_calibrated_brain_phantom_victim_falls_to_fgsm_at_the_rows_eps() -> None:
    row = next(r for r in ROWS if r.id == "rbf-brain-mri")
    assert row.original == "fgsm"
    data = generate_synthetic(row.dataset, size=64, n_train=320, n_val=32, n_test=32, seed=0)
    x_train = data.train.images()
    model = build_model("unet", in_channels=1, num_outputs=2, task="segmentation", width=0.125, depth=0.5,
                        mean=[float(x_train.mean())], std=[float(x_train.std())])
    train_model(model, data, TrainConfig(epochs=15, batch_size=16, lr=0.003, patience=15, augment=False), seed=0)
    model.eval()
    x, y = data.test.images(), data.test.target_tensor()
    x_adv = FGSM(eps=row.eps)(model, x, y)
    with torch.no_grad():
        clean = float(dice(model(x), y).mean()) * 100
        attacked = float(dice(model(x_adv), y).mean()) * 100
    paper_attacked = row.paper[1]
    assert clean >= 60.0  # the tiny victim finds the subtle lesions...
    assert attacked <= paper_attacked + 15  # ... and loses them to FGSM at the row's eps, as the paper's victim
    assert attacked <= clean - 25
