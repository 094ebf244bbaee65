"""Training configurations: YAML presets in ``configs/`` plus ``--set key=value`` overrides.

A configuration is a plain nested dict with three sections, each readable alone:

- ``model``: what ``balancedet.engine.build.build_model`` turns into a detector (``type``:
  ``retinanet``, ``gfl`` or ``faster_rcnn``, the backbone, the neck, the remedy: classification/box loss, sampler,
  and their arguments ``cls_loss_args``, ``box_loss_args``, ``sampler_args``, ``assigner_args``);
  the keys are those of the chosen type (``balancedet.engine.build.MODEL_KEYS``);
- ``data``: the dataset (a YAML file or ``digits``) and the input size;
- ``train``: schedule, optimiser, evaluation, checkpoints.

``DEFAULTS`` holds every ``data`` and ``train`` key with its default value, ``MODEL_KEYS`` every key of
each model type; a preset only states what differs, and an unknown key is an error (a typo must not
silently fall back to a default), as is a key that the chosen model type does not use.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from balancedet.engine.build import resolve_model_config

#: The shipped presets live in the package (``configs/`` at the repository root links here).
PRESET_DIRS = (Path(__file__).resolve().parent.parent / "configs",)

DEFAULTS: dict[str, dict[str, Any]] = {
    # Each model type declares its own keys and defaults (``balancedet.engine.build.MODEL_KEYS``);
    # ``load_config`` completes this section with them and rejects a key the type does not use.
    "model": {"type": "retinanet"},
    "data": {
        "dataset": "digits",
        "min_size": 800,
        "max_size": 1333,
        "size_divisible": 128,
        "skip_bad": False,
        "flip": 0.5,
        "cache": "auto",  # decoded images kept in memory: true, false, or auto (small splits; data.dataset)
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
        "channels_last": True,
        "device": "auto",
        "workers": 0,
        "seed": 0,
        "eval_interval": 1,
        "checkpoint_interval": 200,
        "max_time": None,  # seconds of this process's wall time, data and the final evaluation included
        "schedule": "epochs",  # or "time": the schedule is fitted to max_time (``TimeBudget``)
        "num_plot_batches": 3,  # val_batch{0,1,2}_{labels,pred}.jpg, as ultralytics
        "max_bad_steps": 10,  # steps in a row of a NaN or infinite loss (each skipped) that stop the run
        "diagnostics": True,  # the four kinds' loss shares and the foreground fraction per epoch (engine.diagnostics)
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
            if section == "model":
                # checked against the model type's own keys once every source is merged (``resolve_model_config``)
                base_value = result[section].get(key)
                if isinstance(base_value, dict) and isinstance(value, dict):
                    value = {**base_value, **value}
                result[section][key] = copy.deepcopy(value)
                continue
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
    """``section.key=value`` with the value parsed as YAML (``1e-3``, ``[8, 11]``, ``null``, ``true``);
    ``model.<part>_args.<argument>=value`` gives ``("model", "<part>_args", {argument: value})``."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected section.key=value, e.g. train.epochs=5")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) == 3 and parts[0] == "model" and parts[1].endswith("_args"):
        parts, argument = parts[:2], parts[2]
    elif len(parts) == 2:
        argument = None
    else:
        raise ValueError(
            f"--set {text!r}: the key must be section.key (model.cls_loss=ghmc) or "
            "model.<part>_args.<argument> (model.box_loss_args.beta=0.11)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"--set {text!r}: value is not valid YAML ({error})") from error
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if argument is not None:
        value = {argument: value}
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
    where = (str(path) if preset is not None else "config") + (" with --set" if overrides else "")
    config["model"] = resolve_model_config(config["model"], where=where)
    return config
