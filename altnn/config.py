"""Typed configuration and its validation from plain mappings.

The pipeline reads params.yaml once per stage and passes the mapping to
`parse_study_config`, which checks every key before any work starts and raises one
`ConfigError` listing every problem with the key, the value and what is allowed.
"""

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VARIANTS = ("convnet", "addernet", "snn", "snn_adder")
SPIKING_VARIANTS = ("snn", "snn_adder")
ADDER_VARIANTS = ("addernet", "snn_adder")

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "onecycle", "cosine")
AUGMENTATIONS = ("flip", "crop", "erase")
ACTIVATIONS = ("none", "relu")
READOUTS = ("spike_count", "membrane")
SPIKE_ADDER_WEIGHTS = ("normal", "unit_interval")
DEVICES = ("auto", "cpu", "cuda")

MAX_STEPS = 1000


class ConfigError(ValueError):
    """Invalid parameters: the message lists every bad key, its value and what is allowed."""


def _spec(default: Any, kind: str, *, low: float | None = None, high: float | None = None,
          choices: tuple[str, ...] = (), nullable: bool = False, low_open: bool = False) -> Any:
    """Declare a dataclass field with what validation needs to know about it."""
    metadata = {"kind": kind, "low": low, "high": high, "choices": choices,
                "nullable": nullable, "low_open": low_open}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DataConfig:
    """Normalization and optional class-stratified subsets of the prepared data."""

    mean: float = _spec(0.5, "float")
    std: float = _spec(0.5, "float", low=0.0, low_open=True)
    train_subset: int | None = _spec(None, "int", low=10, high=60_000, nullable=True)
    test_subset: int | None = _spec(None, "int", low=10, high=10_000, nullable=True)
    subset_seed: int = _spec(0, "int", low=0)


@dataclass(frozen=True)
class TrainConfig:
    """Settings every variant shares: the epoch budget, batch sizes and device."""

    epochs: int = _spec(12, "int", low=1, high=10_000)
    batch_size: int = _spec(64, "int", low=1, high=65_536)
    eval_batch_size: int = _spec(64, "int", low=1, high=65_536)
    device: str = _spec("auto", "device")


@dataclass(frozen=True)
class TrackingConfig:
    """The MLflow experiment that contains every run of the study."""

    experiment: str = _spec("altnn-fashion-mnist", "str")


@dataclass(frozen=True)
class VariantConfig:
    """One variant's training recipe and model options.

    Recipe keys apply to every variant, `eta` only to adder variants, the neuron and
    readout keys only to spiking variants, and `spike_adder_weights` only to the spiking
    AdderNet (see `allowed_variant_keys`).
    """

    optimizer: str = _spec("adam", "choice", choices=OPTIMIZERS)
    lr: float = _spec(1e-3, "float", low=0.0, high=10.0, low_open=True)
    weight_decay: float = _spec(0.0, "float", low=0.0, high=1.0)
    momentum: float = _spec(0.9, "float", low=0.0, high=1.0)
    schedule: str = _spec("none", "choice", choices=SCHEDULES)
    warmup_fraction: float = _spec(0.25, "float", low=0.0, high=0.9)
    label_smoothing: float = _spec(0.0, "float", low=0.0, high=0.5)
    augment: tuple[str, ...] = _spec((), "choices", choices=AUGMENTATIONS)
    head_activation: str = _spec("none", "choice", choices=ACTIVATIONS)
    dropout: float = _spec(0.25, "float", low=0.0, high=0.9)
    eta: float | None = _spec(0.2, "float", low=0.0, high=100.0, low_open=True, nullable=True)
    beta: float = _spec(0.95, "float", low=0.0, high=1.0)
    learn_beta: bool = _spec(True, "bool")
    threshold: float = _spec(1.0, "float", low=0.0, high=100.0, low_open=True)
    learn_threshold: bool = _spec(True, "bool")
    surrogate_slope: float = _spec(25.0, "float", low=0.0, high=1000.0, low_open=True)
    readout: str = _spec("spike_count", "choice", choices=READOUTS)
    spike_adder_weights: str = _spec("normal", "choice", choices=SPIKE_ADDER_WEIGHTS)


RECIPE_KEYS = ("optimizer", "lr", "weight_decay", "momentum", "schedule", "warmup_fraction",
               "label_smoothing", "augment", "head_activation", "dropout")
ADDER_KEYS = ("eta",)
SPIKING_KEYS = ("beta", "learn_beta", "threshold", "learn_threshold", "surrogate_slope", "readout")
SPIKING_ADDER_KEYS = ("spike_adder_weights",)


def allowed_variant_keys(variant: str) -> tuple[str, ...]:
    """Return the keys a variant's section may set."""
    keys = RECIPE_KEYS
    if variant in ADDER_VARIANTS:
        keys += ADDER_KEYS
    if variant in SPIKING_VARIANTS:
        keys += SPIKING_KEYS
    if variant in SPIKING_VARIANTS and variant in ADDER_VARIANTS:
        keys += SPIKING_ADDER_KEYS
    return keys


@dataclass(frozen=True)
class ModelConfig:
    """Everything `altnn.models.build_model` needs to build one network."""

    variant: str
    head_activation: str = "none"
    dropout: float = 0.25
    eta: float | None = 0.2
    steps: int | None = None
    beta: float = 0.95
    learn_beta: bool = True
    threshold: float = 1.0
    learn_threshold: bool = True
    surrogate_slope: float = 25.0
    readout: str = "spike_count"
    spike_adder_weights: str = "normal"


@dataclass(frozen=True)
class RunConfig:
    """One training run: a (variant, steps, seed) with its recipe and shared settings."""

    variant: str
    steps: int | None
    seed: int
    recipe: VariantConfig
    train: TrainConfig
    data: DataConfig

    @property
    def name(self) -> str:
        """Return the run name, such as `convnet-s0` or `snn_adder-t20-s0`."""
        steps_part = f"-t{self.steps}" if self.steps is not None else ""
        return f"{self.variant}{steps_part}-s{self.seed}"

    @property
    def model(self) -> ModelConfig:
        options = {key: getattr(self.recipe, key) for key in allowed_variant_keys(self.variant)
                   if key not in RECIPE_KEYS or key in ("head_activation", "dropout")}
        return ModelConfig(variant=self.variant, steps=self.steps, **options)

    def to_flat_dict(self) -> dict[str, Any]:
        """Return every value that shapes the run, with dotted keys, for tracking."""
        flat: dict[str, Any] = {"variant": self.variant, "steps": self.steps, "seed": self.seed}
        for key in allowed_variant_keys(self.variant):
            value = getattr(self.recipe, key)
            flat[key] = ",".join(value) if isinstance(value, tuple) else value
        for section_name in ("train", "data"):
            section = getattr(self, section_name)
            for item in dataclasses.fields(section):
                if section_name == "train" and item.name == "device":
                    continue
                flat[f"{section_name}.{item.name}"] = getattr(section, item.name)
        return flat


@dataclass(frozen=True)
class StudyConfig:
    """All of params.yaml, validated."""

    steps: tuple[int, ...]
    seeds: tuple[int, ...]
    data: DataConfig
    train: TrainConfig
    tracking: TrackingConfig
    variants: dict[str, VariantConfig]

    def runs(self, variant: str) -> list[RunConfig]:
        """List the runs of one variant: every seed, and every step count if it spikes."""
        steps_values: tuple[int | None, ...] = self.steps if variant in SPIKING_VARIANTS else (None,)
        return [RunConfig(variant, steps, seed, self.variants[variant], self.train, self.data)
                for steps in steps_values for seed in self.seeds]


def _describe_allowed(spec: dict[str, Any]) -> str:
    kind = spec["kind"]
    if kind in ("choice", "choices"):
        allowed = ", ".join(repr(choice) for choice in spec["choices"])
        text = f"one of {allowed}" if kind == "choice" else f"a list drawn from {allowed}"
    elif kind == "device":
        text = "'auto', 'cpu', 'cuda' or 'cuda:N'"
    elif kind == "bool":
        text = "true or false"
    elif kind == "str":
        text = "a non-empty string"
    else:
        noun = "an integer" if kind == "int" else "a number"
        low, high = spec["low"], spec["high"]
        bound_low = None if low is None else f"{'>' if spec['low_open'] else '>='} {low:g}"
        bound_high = None if high is None else f"<= {high:g}"
        bounds = " and ".join(part for part in (bound_low, bound_high) if part)
        text = f"{noun} {bounds}" if bounds else noun
    return text + (" or null" if spec["nullable"] else "")


def _parse_number(value: Any, kind: str) -> Any:
    """Return value as an int or float, or raise ValueError.

    PyYAML reads `1e-3` (no dot) as a string, so numeric strings count as numbers.
    """
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = float(value.strip())
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError
    return float(value)


def _parse_value(value: Any, spec: dict[str, Any]) -> Any:
    """Convert one value to its field's type or raise ValueError."""
    kind = spec["kind"]
    if value is None:
        if spec["nullable"]:
            return None
        raise ValueError
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError
        return value
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise ValueError
        return value
    if kind == "choice":
        if value not in spec["choices"]:
            raise ValueError
        return value
    if kind == "choices":
        items = [] if value == "" else value
        if not isinstance(items, list) or any(item not in spec["choices"] for item in items):
            raise ValueError
        if len(set(items)) != len(items):
            raise ValueError
        return tuple(items)
    if kind == "device":
        if not isinstance(value, str):
            raise ValueError
        index = value.removeprefix("cuda:")
        if value not in DEVICES and not (value.startswith("cuda:") and index.isdigit()):
            raise ValueError
        return value
    number = _parse_number(value, kind)
    low, high = spec["low"], spec["high"]
    if low is not None and (number < low or (spec["low_open"] and number == low)):
        raise ValueError
    if high is not None and number > high:
        raise ValueError
    return number


def _parse_section(cls: type, raw: Any, key: str, errors: list[str],
                   allowed: tuple[str, ...] | None = None) -> Any:
    """Build a config dataclass from a mapping, appending one message per bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        errors.append(f"{key}: expected a mapping of settings, got {raw!r}")
        return cls()
    fields = {item.name: item for item in dataclasses.fields(cls)}
    allowed = allowed if allowed is not None else tuple(fields)
    values = {}
    for name, value in raw.items():
        if name not in allowed:
            errors.append(f"{key}.{name}: unknown key (value {value!r}); "
                          f"allowed keys: {', '.join(allowed)}")
            continue
        spec = dict(fields[name].metadata)
        try:
            values[name] = _parse_value(value, spec)
        except (TypeError, ValueError):
            errors.append(f"{key}.{name}: invalid value {value!r}; expected {_describe_allowed(spec)}")
    return cls(**values)


def _parse_int_list(raw: Any, key: str, low: int, high: int, errors: list[str]) -> tuple[int, ...]:
    """Accept a number or a non-empty list of distinct numbers in [low, high]."""
    expected = (f"an integer from {low} to {high}, or a non-empty list of distinct such "
                f"integers, for example 5 or [5, 10]")
    items = raw if isinstance(raw, list) else [raw]
    try:
        values = tuple(_parse_number(item, "int") for item in items)
    except (TypeError, ValueError):
        values = ()
    if not values or len(set(values)) != len(values) or any(not low <= v <= high for v in values):
        errors.append(f"{key}: invalid value {raw!r}; expected {expected}")
        return ()
    return values


def parse_study_config(params: Any) -> StudyConfig:
    """Validate the whole parameter mapping, raising one ConfigError listing every problem."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"parameters: expected a mapping at the top level, got {params!r}")
    errors: list[str] = []
    sections = ("steps", "seeds", "data", "train", "tracking", *VARIANTS)
    for key in params:
        if key not in sections:
            errors.append(f"{key}: unknown top-level key; allowed keys: {', '.join(sections)}")
    for key in ("steps", "seeds"):
        if key not in params:
            errors.append(f"{key}: missing; expected a number or a list of numbers")
    config = StudyConfig(
        steps=_parse_int_list(params.get("steps", [1]), "steps", 1, MAX_STEPS, errors),
        seeds=_parse_int_list(params.get("seeds", [0]), "seeds", 0, 2**31 - 1, errors),
        data=_parse_section(DataConfig, params.get("data"), "data", errors),
        train=_parse_section(TrainConfig, params.get("train"), "train", errors),
        tracking=_parse_section(TrackingConfig, params.get("tracking"), "tracking", errors),
        variants={variant: _parse_section(VariantConfig, params.get(variant), variant, errors,
                                          allowed_variant_keys(variant))
                  for variant in VARIANTS},
    )
    if errors:
        listing = "\n  ".join(errors)
        raise ConfigError(f"invalid parameters ({len(errors)} problem"
                          f"{'s' if len(errors) > 1 else ''}):\n  {listing}\n"
                          "Fix these keys in params.yaml or in the -S overrides and run again.")
    return config
