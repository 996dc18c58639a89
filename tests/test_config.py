import pytest

from medsec.config import PROFILES, config_from_dict, load_config
from medsec.errors import ConfigError


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_load(name):
    cfg = load_config(name)
    assert cfg.profile == name
    assert set(cfg.victims) == {"chest14", "chest2", "rsna", "ct-slices", "brain-mri", "oct", "isic"}


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown key"):
        config_from_dict({"train": {"epochz": 3}})


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        config_from_dict({"data": {"image_size": 4}})


def test_unknown_profile_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        load_config("fast")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = load_config("quick", {"train": {"epochs": 2}})
    assert cfg.train.epochs == 2 and cfg.data.image_size == 64
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg


def test_invalid_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_full_smoke_differs_from_full_only_in_sizes():
    """full-smoke is full with counts shrunk: same image size, architectures, widths, depths, defences."""
    from medsec.config import SMOKE_SIZES

    full = dict(_leaves(load_config("full").model_dump(mode="json")))
    smoke = dict(_leaves(load_config("full-smoke").model_dump(mode="json")))
    changed = {k for k in full if full[k] != smoke[k]}
    assert changed == {k for k, _ in _leaves(SMOKE_SIZES)} | {"profile"}
    size_words = ("n_", "epochs", "steps", "patience", "surrogates", "multipliers", "eps", "data_variants",
                  "sizes", "pixels", "inits", "popsize", "iterations", "rates", "targets", "poisons", "rounds")
    for key in changed - {"profile"}:
        assert any(w in key.split(".")[-1] for w in size_words), f"full-smoke changes {key}, not a size"
    assert smoke["data.image_size"] == full["data.image_size"] == 224
    for key in ("model.width", "model.depth", "transfer.width", "transfer.depth", "transfer.archs"):
        assert smoke[key] == full[key]
    assert load_config("full-smoke").victims == load_config("full").victims


def test_profile_overrides_apply_over_derived_profile():
    cfg = load_config("full-smoke", {"reproduce": {"n_test": 2}})
    assert cfg.profile == "full-smoke" and cfg.reproduce.n_test == 2 and cfg.reproduce.steps == 2
