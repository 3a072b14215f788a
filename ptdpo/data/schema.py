"""The one item schema shared by training data and benchmarks (DESIGN.md section 4).

An :class:`Item` is a prompt with a verifiable answer. :func:`validate_items` checks a list of them and
raises one :class:`ItemError` that lists every problem found (up to ``max_errors``), each naming the
item, the field and, where known, the file and row it came from, so a user can fix a file in one go.

Conventions checked here:

- ``id`` is a non-empty string, unique in the list.
- ``images`` is a list (possibly empty) of image bytes (PNG, JPEG, ...) or file paths (``str``).
- ``question`` and ``answer`` are non-empty strings.
- ``choices``, when present, is a list of 2..26 distinct non-empty strings, and ``answer`` is then the
  option letter (``"A"`` for ``choices[0]``). Loaders turn an option text or index into the letter.
- ``meta`` is a JSON-serialisable dict (it travels through jsonl and parquet).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ptdpo.answers.choices import gold_choice, text_choice
from ptdpo.answers.words import CHOICE_LETTERS

ImageRef = bytes | str


class ItemError(ValueError):
    """Bad input, naming the item and the field so a user can find and fix it.

    ``where`` optionally names the origin (``"data.jsonl line 18"``, ``"items[3]"``).
    """

    def __init__(self, item_id: str | None, field_name: str, problem: str, where: str | None = None):
        self.item_id = item_id
        self.field_name = field_name
        self.problem = problem
        self.where = where
        who = f"item {item_id!r}" if item_id is not None else "item without id"
        if where:
            who = f"{where} ({who})"
        super().__init__(f"{who}, field {field_name!r}: {problem}")


class ItemErrors(ItemError):
    """Several problems at once; ``problems`` holds one :class:`ItemError` per problem.

    ``item_id``/``field_name``/``problem`` are those of the first problem, so code that catches a
    single ItemError keeps working.
    """

    def __init__(self, problems: Sequence[ItemError], max_shown: int = 20):
        if not problems:
            raise ValueError("ItemErrors needs at least one problem")
        self.problems = list(problems)
        first = self.problems[0]
        self.item_id, self.field_name, self.problem, self.where = (
            first.item_id, first.field_name, first.problem, first.where)
        lines = [str(p) for p in self.problems[:max_shown]]
        if len(self.problems) > max_shown:
            lines.append(f"... and {len(self.problems) - max_shown} more")
        header = f"{len(self.problems)} problem(s) in items:"
        ValueError.__init__(self, header + "\n  " + "\n  ".join(lines))


def raise_problems(problems: Sequence[ItemError], max_shown: int = 20) -> None:
    """Raise nothing for no problems, the problem itself for one, an :class:`ItemErrors` for several."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ItemErrors(problems, max_shown)


@dataclass
class Item:
    """A prompt with a verifiable answer.

    ``images`` holds PNG/JPEG bytes or file paths; ``meta`` carries anything a source wants to keep
    (synthetic scenes put their object list, evidence boxes and reasoning steps there).
    """

    id: str
    images: list[ImageRef]
    question: str
    answer: str
    choices: list[str] | None = None
    solution: str | None = None
    source: str = ""
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        known = {f for f in cls.__dataclass_fields__}
        extra = set(d) - known
        if extra:
            raise ItemError(d.get("id"), sorted(extra)[0], f"unknown field (known: {sorted(known)})")
        return cls(**d)

    @property
    def answer_text(self) -> str:
        """The answer as option text for multiple-choice items (``answer`` names one option), else ``answer``."""
        options = gold_choice(self.answer, self.choices) if self.choices else None
        if options and len(options) == 1:
            (idx,) = options
            return self.choices[idx]
        return self.answer


def image_problem(e: Exception, ref: ImageRef) -> str:
    """What went wrong decoding image ``ref``, for a person: PIL's messages name a BytesIO object at
    best, and its decompression-bomb error names no image at all."""
    from PIL import Image, UnidentifiedImageError

    what = f"{len(ref)} bytes starting {bytes(ref[:12])!r}" if isinstance(ref, bytes | bytearray) else str(ref)
    if isinstance(e, Image.DecompressionBombError):
        return (f"cannot decode image: too large to decode safely ({e}); shrink it, the processor scales every "
                f"image down to max_pixels anyway ({what})")
    if isinstance(e, UnidentifiedImageError):
        return f"cannot decode image: not an image format PIL can read ({what})"
    return f"cannot decode image ({type(e).__name__}: {e}; {what})"


def open_image(ref: ImageRef, item_id: str | None = None, index: int = 0):
    """Decode one image reference into an RGB PIL image, or raise ItemError naming the field."""
    from PIL import Image, UnidentifiedImageError

    where = f"images[{index}]"
    try:
        if isinstance(ref, bytes | bytearray):
            img = Image.open(io.BytesIO(ref))
        elif isinstance(ref, str | Path):
            if not Path(ref).exists():
                raise ItemError(item_id, where, f"image file not found: {ref}")
            img = Image.open(ref)
        else:
            raise ItemError(item_id, where, f"expected PNG/JPEG bytes or a path, got {type(ref).__name__}")
        img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ItemError):
            raise
        raise ItemError(item_id, where, image_problem(e, ref)) from e
    return img.convert("RGB")


def item_images(item: Item) -> list:
    """The item's images as RGB PIL images."""
    return [open_image(ref, item.id, i) for i, ref in enumerate(item.images)]


# ---------------------------------------------------------------------------------------- validation


def _short(value: Any, n: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def item_problems(item: Any, check_images: bool = True, where: str | None = None) -> list[ItemError]:
    """Every problem of one item (duplicates across items are checked by :func:`validate_items`)."""
    if not isinstance(item, Item):
        return [ItemError(None, "<item>", f"expected an Item, got {type(item).__name__}", where)]
    probs: list[ItemError] = []
    iid = item.id if isinstance(item.id, str) else None

    def bad(field_name: str, problem: str) -> None:
        probs.append(ItemError(iid, field_name, problem, where))

    if not isinstance(item.id, str):
        bad("id", f"must be a string, got {type(item.id).__name__} {_short(item.id)}")
    elif not item.id.strip():
        bad("id", "empty")
    elif item.id != item.id.strip():
        bad("id", "has leading or trailing whitespace")

    if not isinstance(item.question, str):
        bad("question", f"must be a string, got {type(item.question).__name__}")
    elif not item.question.strip():
        bad("question", "empty")

    answer_ok = False
    if item.answer is None:
        bad("answer", "missing")
    elif not isinstance(item.answer, str):
        bad("answer", f"must be a string, got {type(item.answer).__name__} {_short(item.answer)}")
    elif not item.answer.strip():
        bad("answer", "missing (empty string)")
    else:
        answer_ok = True

    if item.choices is not None:
        ch = item.choices
        if not isinstance(ch, list) or not all(isinstance(c, str) for c in ch):
            bad("choices", f"must be a list of strings, got {_short(ch)}")
        elif len(ch) < 2 or len(ch) > len(CHOICE_LETTERS):
            bad("choices", f"needs 2..{len(CHOICE_LETTERS)} options, got {len(ch)}")
        elif any(not c.strip() for c in ch):
            bad("choices", f"option {CHOICE_LETTERS[[not c.strip() for c in ch].index(True)]} is empty")
        elif len({c.strip() for c in ch}) != len(ch):
            bad("choices", "options are not distinct")
        elif answer_ok:
            letters = CHOICE_LETTERS[: len(ch)]
            if not (len(item.answer) == 1 and item.answer in letters):
                hint = ""
                if text_choice(item.answer, ch) is not None:
                    hint = " (it is an option text: give the letter, or load with answer_format 'text')"
                bad("answer", f"must be an option letter {letters[0]}-{letters[-1]} for a multiple-choice "
                              f"item, got {_short(item.answer)}{hint}")

    if not isinstance(item.images, list):
        bad("images", f"must be a list of image bytes or paths, got {type(item.images).__name__}")
    else:
        for i, ref in enumerate(item.images):
            if not isinstance(ref, bytes | str):
                bad(f"images[{i}]", f"expected image bytes or a path, got {type(ref).__name__}")
            elif check_images:
                try:
                    open_image(ref, iid, i)
                except ItemError as e:
                    bad(e.field_name, e.problem)

    if item.solution is not None and not isinstance(item.solution, str):
        bad("solution", f"must be a string or None, got {type(item.solution).__name__}")
    if not isinstance(item.source, str):
        bad("source", f"must be a string, got {type(item.source).__name__}")
    if not isinstance(item.split, str) or not item.split.strip():
        bad("split", f"must be a non-empty string, got {_short(item.split)}")
    if not isinstance(item.meta, dict):
        bad("meta", f"must be a dict, got {type(item.meta).__name__}")
    else:
        try:
            json.dumps(item.meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            bad("meta", f"not JSON-serialisable ({e})")
    return probs


def validate_items(
    items: Sequence[Item],
    check_images: bool = True,
    locations: Sequence[str] | None = None,
    max_errors: int = 20,
) -> list[Item]:
    """Check every item and return them as a list, or raise one :class:`ItemError` listing the problems.

    ``check_images`` decodes every image (``images[i]`` is named when one cannot be decoded).
    ``locations`` optionally names where each item came from (``"data.jsonl line 3"``); the error
    messages then include it. Duplicate ids name both positions. At most ``max_errors`` problems are
    shown in the message; all of them are in ``error.problems`` when there are several.
    """
    items = list(items)
    raise_problems(find_problems(items, check_images, locations), max_errors)
    return items


def find_problems(
    items: Sequence[Item], check_images: bool = True, locations: Sequence[str] | None = None
) -> list[ItemError]:
    """Every problem of a list of items, duplicate ids included (what :func:`validate_items` raises)."""
    if locations is not None and len(locations) != len(items):
        raise ValueError(f"locations has {len(locations)} entries for {len(items)} items")
    probs: list[ItemError] = []
    first_seen: dict[str, int] = {}
    for pos, item in enumerate(items):
        where = locations[pos] if locations is not None else None
        probs.extend(item_problems(item, check_images=check_images, where=where))
        iid = getattr(item, "id", None)
        if isinstance(iid, str):
            if iid in first_seen:
                other = first_seen[iid]
                if locations is not None:
                    msg = f"duplicate id, also at {locations[other]}"
                else:
                    msg = f"duplicate id at positions {other} and {pos}"
                probs.append(ItemError(iid, "id", msg, where))
            else:
                first_seen[iid] = pos
    return probs
