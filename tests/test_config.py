import copy
from pathlib import Path

import pytest
import yaml

from altnn.config import ConfigError, parse_study_config

PARAMS = yaml.safe_load((Path(__file__).resolve().parent.parent / "params.yaml").read_text())


def params_with(**changes):
    """Copy the repository's params.yaml with dotted keys set (None deletes a key)."""
    params = copy.deepcopy(PARAMS)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        section = params
        for parent in parents:
            section = section[parent]
        if value is None:
            section.pop(last)
        else:
            section[last] = value
    return params


def error_of(params) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_study_config(params)
    return str(raised.value)


def test_repository_params_are_valid():
    config = parse_study_config(PARAMS)
    assert config.steps == (5, 10, 15, 20)
    assert [run.name for run in config.runs("snn_adder")][-1] == "snn_adder-t20-s0"
    assert [run.name for run in config.runs("convnet")] == ["convnet-s0"]


def test_steps_scalar_or_list():
    assert parse_study_config(params_with(steps=20)).steps == (20,)
    assert parse_study_config(params_with(steps=[5, 10])).steps == (5, 10)


def test_numeric_string_from_yaml_is_a_number():
    raw = yaml.safe_load("lr: 1e-3")
    assert raw["lr"] == "1e-3"  # PyYAML's reading, the reason for the rule
    config = parse_study_config(params_with(convnet__lr=raw["lr"]))
    assert config.variants["convnet"].lr == pytest.approx(0.001)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("train__epochs", 0, "train.epochs: invalid value 0"),
    ("train__epochs", 2.5, "train.epochs: invalid value 2.5"),
    ("train__epochs", True, "train.epochs: invalid value True"),
    ("train__batch_size", "many", "train.batch_size: invalid value 'many'"),
    ("train__device", "tpu", "train.device: invalid value 'tpu'"),
    ("convnet__optimizer", "lion", "one of 'adam', 'adamw', 'sgd'"),
    ("convnet__lr", -1, "convnet.lr: invalid value -1"),
    ("convnet__augment", ["flip", "rotate"], "convnet.augment: invalid value"),
    ("data__train_subset", 5, "data.train_subset: invalid value 5"),
    ("data__std", 0, "data.std: invalid value 0"),
    ("snn__readout", "rate", "snn.readout: invalid value 'rate'"),
    ("snn__learn_beta", "yes", "snn.learn_beta: invalid value 'yes'"),
    ("snn_adder__spike_adder_weights", "zeros", "snn_adder.spike_adder_weights: invalid value 'zeros'"),
    ("steps", [5, 5], "steps: invalid value [5, 5]"),
    ("steps", 0, "steps: invalid value 0"),
    ("seeds", "abc", "seeds: invalid value 'abc'"),
])
def test_invalid_value_named_in_error(key, value, expected):
    message = error_of(params_with(**{key: value}))
    assert expected in message
    assert "expected" in message


def test_unknown_keys_list_allowed_keys():
    message = error_of(params_with(convnet__eta=0.2, train__epoch=3,
                                   snn__spike_adder_weights="unit_interval"))
    assert "convnet.eta: unknown key" in message
    assert "snn.spike_adder_weights: unknown key" in message
    assert "train.epoch: unknown key" in message
    assert "allowed keys: epochs" in message


def test_unknown_top_level_section():
    assert "trainer: unknown top-level key" in error_of(params_with(trainer={}))


def test_missing_steps_reported():
    assert "steps: missing" in error_of(params_with(steps=None))


def test_all_problems_in_one_error():
    message = error_of(params_with(train__epochs=-1, convnet__lr="fast", steps=[]))
    assert message.startswith("invalid parameters (3 problems)")


def test_subset_and_null_accepted():
    config = parse_study_config(params_with(data__train_subset=1000, data__test_subset=None))
    assert config.data.train_subset == 1000
    assert config.data.test_subset is None


def test_run_settings_flatten_for_tracking():
    run = parse_study_config(params_with(steps=5)).runs("snn_adder")[0]
    flat = run.to_flat_dict()
    assert flat["steps"] == 5
    assert flat["eta"] == 0.2
    assert flat["train.epochs"] == PARAMS["train"]["epochs"]
    assert run.model.steps == 5
    assert run.model.readout == PARAMS["snn_adder"]["readout"]
