"""Every input problem a loader meets names where it is: the file (or dataset), the line (jsonl, 1-based) or
row (parquet, datasets, 0-based), the item and the field. Before these, a non-UTF-8 byte in a jsonl gave
``UnicodeDecodeError ... position 84`` and an oversized image PIL's ``DecompressionBombError``, neither
naming a file, a line or an item; an unreadable parquet file gave Arrow's message without its name."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ptdpo.data import ItemError, load_items
from ptdpo.data.spec import SpecError


def _png(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header for a ``width`` x ``height`` grey image (400M pixels by default): PIL refuses it
    when it reads the size, before decoding anything, so the file can stay tiny."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00"))
            + _chunk(b"IEND", b""))


def _row(iid: str, image, answer: str = "1") -> dict:
    return {"id": iid, "question": "How many?", "answer": answer, "images": [image]}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _message(spec: dict, error=ItemError) -> str:
    with pytest.raises(error) as ei:
        load_items(spec)
    return str(ei.value)


def test_non_utf8_bytes_in_a_jsonl_name_the_file_and_line(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    p = tmp_path / "data.jsonl"
    good = json.dumps(_row("a", "ok.png")).encode()
    bad = b'{"id": "b", "question": "caf\xe9 au lait?", "answer": "2", "images": ["ok.png"]}'
    p.write_bytes(good + b"\n" + bad + b"\n" + good.replace(b'"a"', b'"c"') + b"\n")
    msg = _message({"format": "jsonl", "path": str(p)})
    assert "data.jsonl line 2 (item 'b'), field '<line>': not UTF-8 text: byte 0xe9 at column 29" in msg, msg
    assert "line 1" not in msg and "line 3" not in msg  # the other lines load


def test_a_utf8_byte_order_mark_is_not_data(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(_row("a", "ok.png")).encode() + b"\n")
    assert [it.id for it in load_items({"format": "jsonl", "path": str(p)})] == ["a"]


def test_a_decompression_bomb_names_the_file_line_item_and_field(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    (tmp_path / "huge.png").write_bytes(_bomb_png())
    p = _jsonl(tmp_path / "data.jsonl", [_row("small", "ok.png"), _row("big", "huge.png")])
    msg = _message({"format": "jsonl", "path": str(p)})
    assert "data.jsonl line 2 (item 'big'), field 'images[0]': cannot decode image: too large" in msg, msg
    assert "400000000 pixels" in msg and "huge.png" in msg


def test_a_decompression_bomb_in_a_parquet_row(tmp_path):
    pq.write_table(pa.table({"id": ["p0", "p1"], "question": ["q", "q"], "answer": ["1", "2"],
                             "image": [_png(), _bomb_png()]}), tmp_path / "rows.parquet")
    msg = _message({"format": "parquet", "path": str(tmp_path / "rows.parquet")})
    assert "rows.parquet row 1 (item 'p1'), field 'images[0]': cannot decode image: too large" in msg, msg


def test_truncated_and_garbled_image_bytes(tmp_path):
    noise = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(noise, format="PNG")
    (tmp_path / "cut.png").write_bytes(noise.getvalue()[: len(noise.getvalue()) // 2])
    p = _jsonl(tmp_path / "data.jsonl", [_row("cut", "cut.png")])
    msg = _message({"format": "jsonl", "path": str(p)})
    assert "data.jsonl line 1 (item 'cut'), field 'images[0]': cannot decode image" in msg, msg
    assert "truncated" in msg and "cut.png" in msg


def test_parquet_row_with_bad_image_bytes_and_a_missing_field(tmp_path):
    pq.write_table(pa.table({"id": ["p0", "p1", "p2"], "question": ["q", "q", "q"], "answer": ["1", "2", None],
                             "image": [_png(), b"not an image at all", _png()]}), tmp_path / "rows.parquet")
    msg = _message({"format": "parquet", "path": str(tmp_path / "rows.parquet")})
    assert "rows.parquet row 1 (item 'p1'), field 'images[0]': cannot decode image: not an image format" in msg, msg
    assert "b'not an image'" in msg  # the bytes, not "<_io.BytesIO object at 0x...>"
    assert "rows.parquet row 2 (item 'p2'), field 'answer': missing" in msg


def test_hf_dataset_row_with_a_bad_image(tmp_path):
    import datasets

    features = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "image": datasets.Image()})
    ds = datasets.Dataset.from_dict(
        {"id": ["h0", "h1"], "question": ["q", "q"], "answer": ["1", "2"],
         "image": [{"bytes": _png(), "path": None}, {"bytes": b"garbage", "path": None}]}, features=features)
    ds.save_to_disk(str(tmp_path / "hfds"))
    msg = _message({"format": "hf_disk", "path": str(tmp_path / "hfds")})
    assert "hfds row 1 (item 'h1'), field 'images[0]': cannot decode image" in msg, msg


def test_missing_image_file_names_where_it_was_looked_for(tmp_path):
    p = _jsonl(tmp_path / "data.jsonl", [_row("m", "imgs/nope.png")])
    msg = _message({"format": "jsonl", "path": str(p)})
    assert "data.jsonl line 1 (item 'm'), field 'images[0]': image file not found: imgs/nope.png" in msg, msg
    assert str(tmp_path / "imgs" / "nope.png") in msg


def test_an_unreadable_parquet_file_is_named(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"this is not parquet")
    msg = _message({"format": "parquet", "path": str(tmp_path / "broken.parquet")}, SpecError)
    assert "broken.parquet: not a readable parquet file" in msg, msg


def test_an_unloadable_hf_data_file_is_named(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "question": "q", "answer": "1"}\n{"id": broken\n')
    msg = _message({"format": "hf", "path": "json", "data_files": str(tmp_path / "rows.jsonl")}, SpecError)
    assert "cannot load dataset 'json'" in msg and "rows.jsonl" in msg, msg
