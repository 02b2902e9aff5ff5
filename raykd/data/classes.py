"""One explicit class mapping per annotation file: label i <-> class name <-> COCO category id.

The label order is the experiment's ``classes:`` list when given, else the train annotation file's
categories sorted by id (COCO's and mmdet's convention, and the embedded shapes set's order). It is
never the order in which a JSON file happens to list its categories: mmdet's ``CocoDataset`` maps
labels by list order while its class names follow the given tuple, so a file listing categories in
another order than their ids silently relabelled every class. Every split is then matched by *name*,
so train and val files may number their categories differently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raykd.common.errors import ConfigError

REQUIRED_KEYS = ("images", "annotations", "categories")


@dataclass(frozen=True)
class ClassMap:
    """Label ``i`` is class ``names[i]``, COCO category ``cat_ids[i]`` in ``ann_file``."""

    names: tuple[str, ...]
    cat_ids: tuple[int, ...]
    ann_file: str = ""

    def label(self, cat_id: int) -> int:
        return self.cat_ids.index(cat_id)


def read_text(path: Path, source: str, key: str) -> str:
    """A file's text; a file that is not UTF-8 is a one-line error naming where it is used."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(source, key, f"{path} is not UTF-8 text (bad byte at offset {err.start})") from None
    except OSError as err:
        raise ConfigError(source, key, f"cannot read {path}: {err.strerror or err}") from None


_checked: dict[tuple[str, int, int], list[dict[str, Any]]] = {}


def annotation_categories(path: str | Path, source: str = "", key: str = "") -> list[dict[str, Any]]:
    """The categories of a COCO annotation file, after checking the file is what training and
    evaluation rely on. Memoised per file version, keeping only the categories: a real COCO train
    file takes seconds to parse and gigabytes to hold."""
    path = Path(path).expanduser()
    where = (source or str(path), key if source else "")
    try:
        st = path.stat()
    except OSError:
        raise ConfigError(*where, f"annotation file not found: {path}") from None
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _checked:
        _checked[memo] = _check_coco(_parse_json(path, *where), path, *where)["categories"]
    return _checked[memo]


def _parse_json(path: Path, source: str, key: str) -> Any:
    text = read_text(path, source, key)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(source, key, f"{path} is not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None


def _check_coco(data: Any, path: Path, source: str, key: str) -> dict[str, Any]:
    def bad(msg: str) -> ConfigError:
        return ConfigError(source, key, f"{path} is not a COCO annotation file: {msg}")

    if not isinstance(data, dict):
        raise bad("expected a JSON object at the top level")
    for k in REQUIRED_KEYS:
        if not isinstance(data.get(k), list):
            raise bad(f"missing list {k!r}")
    ids, names = set(), set()
    for i, cat in enumerate(data["categories"]):
        if not (isinstance(cat, dict) and isinstance(cat.get("id"), int) and isinstance(cat.get("name"), str)):
            raise bad(f"categories[{i}] needs an integer 'id' and a string 'name'")
        if cat["id"] in ids or cat["name"] in names:
            raise bad(f"categories[{i}] repeats id {cat['id']} or name {cat['name']!r}")
        ids.add(cat["id"])
        names.add(cat["name"])
    if not ids:
        raise bad("no categories")
    _check_annotations(data, ids, bad)
    return data


def _check_annotations(data: dict[str, Any], cat_ids: set[int], bad) -> None:
    img_ids = set()
    for i, img in enumerate(data["images"]):
        if not (isinstance(img, dict) and all(k in img for k in ("id", "file_name", "width", "height"))):
            raise bad(f"images[{i}] needs 'id', 'file_name', 'width' and 'height'")
        img_ids.add(img["id"])
    for i, ann in enumerate(data["annotations"]):
        if not (isinstance(ann, dict) and all(k in ann for k in ("image_id", "category_id", "bbox"))):
            raise bad(f"annotations[{i}] needs 'image_id', 'category_id' and 'bbox'")
        if ann["category_id"] not in cat_ids:
            raise bad(f"annotations[{i}] has category_id {ann['category_id']}, which is not in categories")
        if ann["image_id"] not in img_ids:
            raise bad(f"annotations[{i}] has image_id {ann['image_id']}, which is not in images")
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise bad(f"annotations[{i}].bbox must be [x, y, width, height]")


def label_order(categories: list[dict[str, Any]], classes: Sequence[str] | None, source: str, key: str) -> tuple[str, ...]:
    """The experiment's ``classes`` (exactly the file's category names, in any order), else the
    names sorted by category id."""
    by_id = tuple(c["name"] for c in sorted(categories, key=lambda c: c["id"]))
    if classes is None:
        return by_id
    if len(set(classes)) != len(classes) or set(classes) != set(by_id):
        raise ConfigError(source, "classes", f"must list exactly the dataset's classes {list(by_id)} in any order "
                                             f"(got {list(classes)})")
    return tuple(classes)


def split_map(ann_file: str | Path, names: Sequence[str], source: str = "", key: str = "") -> ClassMap:
    """``names`` (the label order) matched by name to ``ann_file``'s category ids."""
    cats = annotation_categories(ann_file, source, key)
    ids = {c["name"]: c["id"] for c in cats}
    missing = [n for n in names if n not in ids]
    extra = sorted(set(ids) - set(names))
    if missing or extra:
        raise ConfigError(source, key, f"{ann_file}: categories differ from the training classes "
                                       f"(missing {missing}, extra {extra})")
    return ClassMap(tuple(names), tuple(int(ids[n]) for n in names), str(ann_file))


def file_class_map(ann_file: str | Path, classes: Sequence[str] | None = None, source: str = "", key: str = "") -> ClassMap:
    names = label_order(annotation_categories(ann_file, source, key), classes, source, key)
    return split_map(ann_file, names, source, key)

