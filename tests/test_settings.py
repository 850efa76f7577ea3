"""The static settings: one LogoCaSettings shared by test time and training, validated once."""

from pathlib import Path

import pytest

from logocap_jax import config_utils, errors
from logocap_jax.inference.pipeline import DecodeSettings
from logocap_jax.logo_ca import LogoCaSettings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config():
    return config_utils.load_config(str(ROOT / "configs" / "mini.py"))


def test_test_time_and_training_share_the_config_logo_ca_section(config):
    config.logo_ca.reweigh = False
    config.logo_ca.local_half_size = 3
    decode = config_utils.decode_settings(config)
    train = config_utils.train_settings(config)
    assert decode.logo_ca == train.logo_ca == LogoCaSettings(**config.logo_ca.to_dict())
    assert (decode.logo_ca.reweigh, decode.logo_ca.local_half_size) == (False, 3)
    assert decode.logo_ca.global_half_size == 24  # the mini config's halved window
    assert decode.num_centers == train.num_centers == config.decode.num_centers


@pytest.mark.parametrize(
    "field, value",
    [
        ("sampling", "nearest"),
        ("dynamic_conv", "fft"),
        ("global_sigma", 0.0),
        ("local_half_size", 0),
        ("global_half_size", -1),
    ],
)
def test_bad_logo_ca_settings_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        LogoCaSettings(**{field: value})


def test_bad_decode_settings_are_named():
    with pytest.raises(ValueError, match="adaptation"):
        DecodeSettings(adaptation="most")
    with pytest.raises(ValueError, match="scales"):
        DecodeSettings(scales=(0.5, 2.0))


def test_settings_are_hashable_and_compare_by_value():
    assert hash(DecodeSettings()) == hash(DecodeSettings(logo_ca=LogoCaSettings()))
    assert DecodeSettings(logo_ca=LogoCaSettings(reweigh=False)) != DecodeSettings()


def test_unknown_config_field_fails_loudly(config):
    config.logo_ca.unlock()
    config.logo_ca.window = 11
    with pytest.raises(errors.ConfigError, match=r"config\.logo_ca\.window is not a setting"):
        config_utils.logo_ca_settings(config)
