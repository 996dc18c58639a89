"""The clean baseline: train (or load) every victim of an experiment and tabulate its clean metrics, and Levy
et al.'s countermeasure (signed DICOM verified before inference) on the run's own adversarial images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsec.config import ExperimentConfig
from medsec.models.inference import module_device
from medsec.models.victims import get_victim
from medsec.studies.common import StudyOutput, config_digest, provenance, victim_cell
from medsec.studies.grid import Executor, run_grid


def integrity_section(cfg: ExperimentConfig, out: Path, dataset: str = "chest2", n: int = 16,
                      eps: float = 0.02) -> tuple[dict[str, Any], str] | None:
    """Levy et al.'s countermeasure on this run's own adversarial images: PGD images (eps in [0, 1] units)
    planted into signed DICOM copies of the clean test images, as an attacker inside a PACS would; the
    integrity gate must refuse every planted file and accept every untouched one. None when the profile
    has no such dataset. Returns (the demo's result, its Markdown section)."""
    if dataset not in cfg.victims:
        return None
    from medsec.attacks import PGD
    from medsec.integrity.demo import tamper_demo, tamper_demo_markdown

    v = get_victim(cfg, dataset)
    x, y = v.data.test.images(slice(0, n)), v.data.test.target_tensor(slice(0, n))
    dev = module_device(v.model)  # the victim stays where it was loaded (cfg.device)
    x_adv = PGD(eps=eps, steps=10, seed=cfg.seed)(v.model.eval(), x.to(dev), y.to(dev)).cpu()
    result = tamper_demo(x.numpy(), x_adv.numpy(), out / "integrity")
    body = tamper_demo_markdown(result).split("\n", 1)[1]  # the report gives the heading
    intro = (f"{n} test images of {v.data.info.label}, PGD-10 at eps {eps} ([0, 1] pixel units) against "
             f"its victim ({v.meta['arch_label']}).\n")
    return result, intro + body


def run_clean(cfg: ExperimentConfig, out_dir: str | Path, datasets: list[str] | None = None,
              executor: Executor | None = None) -> dict[str, Any]:
    """Train/load the victims (one grid cell each) and run the integrity demo; writes results.json."""
    out = StudyOutput.at(out_dir)
    names = datasets or list(cfg.victims)
    h = config_digest(cfg, "reproduce", "transfer", "survey", "defences")
    cells = [victim_cell(cfg, name, h) for name in names]
    done = run_grid(cells, out.store, executor, title="clean baseline")
    rows = [done[c.key] for c in cells]
    integrity = integrity_section(cfg, out.root)
    prov = provenance(cfg, out, {"experiment": cfg.seed})
    out.write_results({"rows": rows, "integrity": integrity[0] if integrity else None, "provenance": prov})
    return {"rows": rows, "integrity": integrity[1] if integrity else None, "provenance": prov}
