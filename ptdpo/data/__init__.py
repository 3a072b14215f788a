"""Items, validation, loaders and synthetic scenes (DESIGN.md section 4).

Heavy dependencies (pyarrow, datasets) are imported only when a loader needs them.
"""

from ptdpo.data.loaders import (
    DatasetSpec,
    SpecError,
    load_items,
    manifest,
    save_items_jsonl,
    save_items_parquet,
)
from ptdpo.data.schema import (
    CHOICE_LETTERS,
    Item,
    ItemError,
    ItemErrors,
    find_problems,
    item_images,
    open_image,
    validate_items,
)
from ptdpo.data.synthetic import FAMILIES, generate_item, generate_synthetic, render_evidence

__all__ = [
    "CHOICE_LETTERS",
    "FAMILIES",
    "DatasetSpec",
    "Item",
    "ItemError",
    "ItemErrors",
    "SpecError",
    "find_problems",
    "generate_item",
    "generate_synthetic",
    "item_images",
    "load_items",
    "manifest",
    "open_image",
    "render_evidence",
    "save_items_jsonl",
    "save_items_parquet",
    "validate_items",
]
