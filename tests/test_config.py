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
