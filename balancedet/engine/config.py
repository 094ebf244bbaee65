"""Training configurations: YAML presets in ``configs/`` plus ``--set key=value`` overrides.

A configuration is a plain nested dict with three sections, each readable alone:

- ``model``: what ``balancedet.engine.build.build_model`` turns into a detector (``type``:
  ``retinanet`` or ``gfl``, the backbone, the neck, the remedy: classification/box loss, sampler);
- ``data``: the dataset (a YAML file or ``digits``) and the input size;
- ``train``: schedule, optimiser, evaluation, checkpoints.

``DEFAULTS`` holds every key with its default value; a preset only states what differs, and an
unknown key is an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

#: The shipped presets live in the package (``configs/`` at the repository root links here).
PRESET_DIRS = (Path(__file__).resolve().parent.parent / "configs",)

DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {
        "type": "retinanet",
        "backbone": 50,
        "backbone_weights": None,
        "norm": "frozen_bn",
        "frozen_stages": 1,
        "fpn_channels": 256,
        "bfp": False,
        "head_channels": 256,
        "num_convs": 4,
        "anchor_sizes": [32, 64, 128, 256, 512],
        "octave_base_scale": 8.0,
        "cls_loss": "focal",
        "alpha": 0.25,
        "gamma": 2.0,
        "box_loss": "smooth_l1",
        "sampler": None,
        "normalizer_momentum": None,
        "score_thresh": 0.05,
        "topk": 1000,
        "nms_iou": 0.5,
        "max_dets": 100,
    },
    "data": {
        "dataset": "digits",
        "min_size": 800,
        "max_size": 1333,
        "size_divisible": 128,
        "skip_bad": False,
        "flip": 0.5,
    },
    "train": {
        "epochs": 12,
        "batch_size": 16,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "warmup_iters": 500,
        "warmup_factor": 0.001,
        "milestones": [8, 11],
        "lr_decay": 0.1,
        "grad_clip": None,
        "amp": "auto",
        "device": "auto",
        "workers": 0,
        "seed": 0,
        "eval_interval": 1,
        "checkpoint_interval": 200,
        "max_time": None,
        "num_plot_images": 3,
    },
}


def find_preset(name: str) -> Path:
    """``name`` as a path, or the preset ``configs/<name>.yaml``."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for folder in PRESET_DIRS:
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for folder in PRESET_DIRS if folder.is_dir() for p in folder.glob("*.yaml")})
    raise ValueError(f"config {name!r}: no such file and no preset of that name (presets: {', '.join(known)})")


def merge(base: dict[str, Any], update: dict[str, Any], where: str) -> dict[str, Any]:
    """``base`` updated by ``update``, section by section; unknown sections or keys raise naming ``where``."""
    result = copy.deepcopy(base)
    if not isinstance(update, dict):
        raise ValueError(f"{where}: expected a mapping with sections {sorted(base)}, got {type(update).__name__}")
    for section, values in update.items():
        if section not in result:
            raise ValueError(f"{where}: unknown section {section!r} (sections: {', '.join(sorted(result))})")
        if not isinstance(values, dict):
            raise ValueError(f"{where}: section {section!r} must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            if key not in result[section]:
                raise ValueError(f"{where}: unknown key {section}.{key} (known: {', '.join(sorted(result[section]))})")
            result[section][key] = _coerce(result[section][key], value, f"{where}: {section}.{key}")
    return result


def _coerce(default: Any, value: Any, where: str) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: turn strings into numbers where the default is a number,
    and reject a non-numeric value there."""
    if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
        return int(number) if isinstance(default, int) and number.is_integer() else number
    if type(default) is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` with the value parsed as YAML (``1e-3``, ``[8, 11]``, ``null``, ``true``)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected section.key=value, e.g. train.epochs=5")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2:
        raise ValueError(f"--set {text!r}: the key must be section.key, e.g. model.cls_loss=ghmc")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"--set {text!r}: value is not valid YAML ({error})") from error
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return parts[0], parts[1], value


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """``DEFAULTS`` <- the preset (a name in ``configs/`` or a YAML path) <- ``--set`` overrides."""
    config = copy.deepcopy(DEFAULTS)
    if preset is not None:
        path = find_preset(preset)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({error})") from error
        config = merge(config, loaded, str(path))
    for text in overrides or []:
        section, key, value = parse_override(text)
        config = merge(config, {section: {key: value}}, f"--set {text}")
    return config
