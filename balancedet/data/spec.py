"""Datasets named by a small YAML file, the way ultralytics users know it.

```yaml
format: coco            # coco | voc | yolo | digits
path: /data/mine        # optional root; relative paths below are resolved against it
train:
  images: images/train
  annotations: annotations/train.json   # coco: a json file; voc: the xml folder; yolo: the txt folder
val:
  images: images/val
  annotations: annotations/val.json
  image_set: ImageSets/Main/val.txt     # voc only, optional
names: [person, car]    # or {0: person, 1: car}; required for yolo, optional for voc, checked for coco
```

``path`` is resolved against the YAML's folder, and every other path against ``path`` (or the
YAML's folder without one). For YOLO, ``train: images/train`` alone is enough: the labels folder is
the path with its last ``images`` component replaced by ``labels``.

``format: digits`` generates the built-in scenes: ``options:`` holds ``DigitsOptions`` fields
(e.g. ``{imbalance: 100}``) and ``path`` the cache root. The name ``digits`` (the default of
``load_data_spec``) means the built-in set with its default options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from balancedet.data.coco import load_coco
from balancedet.data.digits import prepare_digits
from balancedet.data.records import RecordSet
from balancedet.data.voc import collect_voc_names, load_voc
from balancedet.data.yolo import labels_dir_for, load_yolo

__all__ = ["FORMATS", "DataSpec", "SplitSpec", "load_data_spec"]

FORMATS = ("coco", "voc", "yolo")
BUILTIN = ("digits",)


@dataclass(frozen=True)
class SplitSpec:
    """Where one split lives: the image folder, the annotations (file or folder), a VOC image-set list."""

    images: Path
    annotations: Path
    image_set: Path | None = None


@dataclass(frozen=True)
class DataSpec:
    """A dataset: its format, its splits and (where the YAML gives them) its class names.

    Attributes:
        name: the YAML's stem, or the built-in name.
        format: ``coco``, ``voc`` or ``yolo``.
        source: the YAML file the spec was read from.
        splits: ``{"train": SplitSpec, "val": SplitSpec, ...}``.
        names: class names from the YAML, or ``None`` (COCO and VOC can find them in the annotations).
    """

    name: str
    format: str
    source: Path
    splits: dict[str, SplitSpec] = field(default_factory=dict)
    names: list[str] | None = None

    def split(self, split: str) -> SplitSpec:
        """The named split, or ``ValueError`` naming the YAML and the splits it has."""
        if split not in self.splits:
            raise ValueError(f"{self.source}: no split {split!r} (it has {', '.join(sorted(self.splits))})")
        return self.splits[split]

    def load(self, split: str, *, skip_bad: bool = False) -> RecordSet:
        """Read the records of ``split`` with the loader of the spec's format."""
        where = self.split(split)
        if self.format == "coco":
            records = load_coco(where.annotations, where.images, skip_bad=skip_bad)
            if self.names is not None and self.names != records.class_names:
                raise ValueError(
                    f"{self.source}: names {self.names} differ from the categories of {where.annotations} "
                    f"{records.class_names}"
                )
            return records
        if self.format == "voc":
            # Without names in the YAML, every split gets the names of all splits, so their labels agree.
            names = self.names or collect_voc_names(sorted({s.annotations for s in self.splits.values()}))
            return load_voc(
                where.annotations, where.images, image_set=where.image_set, class_names=names, skip_bad=skip_bad
            )
        return load_yolo(where.annotations, where.images, self.names or [], skip_bad=skip_bad)


def _names(value: object, source: Path) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        keys = sorted(value)
        if keys != list(range(len(keys))):
            raise ValueError(f"{source}: 'names' as a mapping needs the keys 0..{len(keys) - 1}, got {keys}")
        return [str(value[key]) for key in keys]
    if isinstance(value, list) and value:
        return [str(name) for name in value]
    raise ValueError(f"{source}: 'names' must be a non-empty list or a {{index: name}} mapping, got {value!r}")


def _existing(path: Path, source: Path, key: str, folder: bool | None) -> Path:
    exists = path.is_dir() if folder else path.is_file() if folder is False else path.exists()
    if not exists:
        kind = "folder" if folder else "file" if folder is False else "path"
        raise ValueError(f"{source}: {key}: {kind} {path} does not exist")
    return path


def _split(value: object, split: str, fmt: str, base: Path, source: Path) -> SplitSpec:
    if isinstance(value, str) and fmt == "yolo":
        value = {"images": value}
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {split} must be a mapping {{images: DIR, annotations: ...}}, got {value!r}")
    unknown = sorted(set(value) - {"images", "annotations", "image_set"})
    if unknown:
        raise ValueError(f"{source}: {split}: unknown key(s) {', '.join(map(str, unknown))}")
    if "images" not in value:
        raise ValueError(f"{source}: {split}: missing key 'images'")
    images = _existing(base / str(value["images"]), source, f"{split}.images", folder=True)
    if "annotations" in value:
        annotations = base / str(value["annotations"])
    elif fmt == "yolo":
        annotations = labels_dir_for(images)
    else:
        raise ValueError(f"{source}: {split}: missing key 'annotations'")
    annotations = _existing(annotations, source, f"{split}.annotations", folder=fmt != "coco")
    image_set = None
    if "image_set" in value:
        if fmt != "voc":
            raise ValueError(f"{source}: {split}: 'image_set' is for the voc format only")
        image_set = _existing(base / str(value["image_set"]), source, f"{split}.image_set", folder=False)
    return SplitSpec(images, annotations, image_set)


def _digits(data: dict, source: Path) -> Path:
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"{source}: 'options' must be a mapping of digits options, got {options!r}")
    root = source.parent / Path(str(data["path"])).expanduser() if data.get("path") is not None else None
    try:
        return prepare_digits(root, **options) / "data.yaml"
    except TypeError as error:
        raise ValueError(f"{source}: bad digits options: {error}") from None
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def load_data_spec(name_or_path: str | Path = "digits") -> DataSpec:
    """Read a dataset YAML (or a folder holding ``data.yaml``), or prepare a built-in dataset by name.

    Args:
        name_or_path: ``"digits"`` (the built-in scenes, generated once into the cache), a YAML
            file, or a folder with a ``data.yaml``.

    Returns:
        The ``DataSpec`` with absolute paths; every folder and file it names exists.
    """
    if str(name_or_path) in BUILTIN and not Path(name_or_path).exists():
        spec = load_data_spec(prepare_digits())
        return DataSpec(str(name_or_path), spec.format, spec.source, spec.splits, spec.names)
    source = Path(name_or_path).expanduser()
    if source.is_dir():
        source = source / "data.yaml"
    if not source.is_file():
        raise ValueError(
            f"dataset {str(name_or_path)!r}: no such YAML file or built-in dataset (built-in: {', '.join(BUILTIN)})"
        )
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping with keys format, train, val, names")
    fmt = data.get("format")
    if fmt is None:
        raise ValueError(f"{source}: missing key 'format' (one of {', '.join(FORMATS + BUILTIN)})")
    if fmt in BUILTIN:
        spec = load_data_spec(_digits(data, source))
        return DataSpec(source.stem, spec.format, spec.source, spec.splits, spec.names)
    if fmt not in FORMATS:
        raise ValueError(f"{source}: unknown format {fmt!r} (one of {', '.join(FORMATS + BUILTIN)})")
    source = source.resolve()
    base = source.parent
    if data.get("path") is not None:
        base = _existing((base / Path(str(data["path"])).expanduser()).resolve(), source, "path", True)
    names = _names(data.get("names"), source)
    if fmt == "yolo" and names is None:
        raise ValueError(f"{source}: missing key 'names' (YOLO labels are class indices)")
    splits = {key: _split(data[key], key, fmt, base, source) for key in ("train", "val", "test") if key in data}
    if not splits:
        raise ValueError(f"{source}: no split given (keys train, val, test)")
    name = source.parent.name if source.stem == "data" else source.stem
    return DataSpec(name, fmt, source, splits, names)
