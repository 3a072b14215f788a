"""A new user's path, end to end: a small VQA set in a public release's layout (CLEVR: a questions JSON and
an image folder; word answers, 64x64 PNGs drawn here, not ptdpo's synthetic scenes) is converted with the
recipe of docs/data.md, configured with the config of docs/data.md, and the main flow runs on it with
hints from an OpenAI-compatible server on 127.0.0.1 (real HTTP; it answers with hints written for these
items) and the audit at tiny-test.json's floor. One run serves every test here:

- the run: hints from the server, the audit passed, the vqa answer mode, paths from the config's folder;
- the training card, read from the datastore while ``train`` still runs, already shows a step;
- the TensorBoard event files are stored with the run and hold every step;
- the report card in a real headless browser (Debian's chromium): its sentences, no table clipped at
  1200 px, images that fit, a chart that is not blank, relative improvement in words.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_flow_e2e import FLOW, _restore_typing, card_payloads, components, flow_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "data.md"
STEPS = 16  # long enough to read the live card while train runs
pytestmark = pytest.mark.slow

# (shape, colour, box in 0..1000, question, answer): word answers, one question per image, as in CLEVR
SCENES = [
    ("circle", (200, 30, 30), (100, 100, 450, 450), "What shape is the red object?", "circle"),
    ("square", (30, 60, 200), (550, 550, 900, 900), "What color is the square?", "blue"),
    ("triangle", (30, 160, 60), (300, 300, 700, 700), "Is there a triangle in the picture?", "yes"),
    ("square", (200, 30, 30), (550, 100, 900, 450), "Is there a circle in the picture?", "no"),
    ("circle", (30, 60, 200), (100, 550, 450, 900), "What shape is the blue object?", "circle"),
    ("square", (30, 160, 60), (300, 300, 700, 700), "What color is the square in the middle?", "green"),
    ("triangle", (200, 30, 30), (300, 550, 700, 900), "What shape is at the bottom of the image?", "triangle"),
    ("circle", (30, 160, 60), (300, 100, 700, 450), "What color is the circle?", "green"),
]


def _hint(box, label: str, steps: list[str], traps: list[str]) -> dict:
    return {"regions": [{"bbox": list(box), "label": label, "why": "the object the question is about"}],
            "steps": steps, "traps": traps}


# Written for these items, answer-free (the audit checks it): what the server answers.
HINTS = {
    SCENES[0][3]: _hint(SCENES[0][2], "the red object", ["Follow the outline of the red object.",
                                                         "Decide whether its edge is curved or made of straight sides."],
                        ["Do not name its colour instead of its form."]),
    SCENES[1][3]: _hint(SCENES[1][2], "the four-sided object", ["Look at the fill of the object in the lower right.",
                                                                 "Name the fill in one word."], []),
    SCENES[2][3]: _hint(SCENES[2][2], "the object in the middle", ["Look at every object's outline.",
                                                                   "Check whether one has three straight sides."], []),
    SCENES[3][3]: _hint(SCENES[3][2], "the object at the top right", ["Look at every object's outline.",
                                                                      "Check whether any edge is curved all round."], []),
    SCENES[4][3]: _hint(SCENES[4][2], "the blue object", ["Follow the outline of the blue object.",
                                                          "Decide whether its edge is curved or made of straight sides."], []),
    SCENES[5][3]: _hint(SCENES[5][2], "the object in the middle", ["Look at the fill of the middle object.",
                                                                   "Name the fill in one word."], []),
    SCENES[6][3]: _hint(SCENES[6][2], "the object near the bottom", ["Follow the outline of the lower object.",
                                                                     "Count its corners to name the form."], []),
    SCENES[7][3]: _hint(SCENES[7][2], "the round object", ["Look at the fill of the round object.",
                                                           "Name the fill in one word."], []),
}


# ------------------------------------------------------------------------------------------- helpers
def _draw(shape: str, colour, box) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (235, 235, 228))
    x1, y1, x2, y2 = (int(v * 64 / 1000) for v in box)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse([x1, y1, x2, y2], fill=colour)
    elif shape == "square":
        d.rectangle([x1, y1, x2, y2], fill=colour)
    else:
        d.polygon([((x1 + x2) // 2, y1), (x2, y2), (x1, y2)], fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_clevr_release(root: Path) -> None:
    """A few items in CLEVR v1.0's published layout: questions/CLEVR_val_questions.json + images/val/."""
    (root / "questions").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    questions = []
    for i, (shape, colour, box, q, a) in enumerate(SCENES):
        name = f"CLEVR_val_{i:06d}.png"
        (root / "images" / "val" / name).write_bytes(_draw(shape, colour, box))
        questions.append({"image_index": i, "split": "val", "image_filename": name, "question_index": i,
                          "question": q, "answer": a, "question_family_index": i % 3})
    (root / "questions" / "CLEVR_val_questions.json").write_text(json.dumps({"info": {"split": "val"},
                                                                             "questions": questions}))


def doc_block(name: str, lang: str) -> str:
    """The code block that follows ``<!-- recipe: NAME ...-->`` in docs/data.md."""
    text = DOC.read_text()
    m = re.search(rf"<!-- recipe: {re.escape(name)}\b.*?-->\s*```{lang}\n(.*?)```", text, re.S)
    assert m, f"docs/data.md has no {lang} block for recipe {name!r}"
    return m.group(1)


class HintServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 answering with :data:`HINTS`."""

    def __init__(self):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = [m for m in body["messages"] if m["role"] == "user"][0]["content"]
                text = " ".join(p.get("text", "") for p in user if p.get("type") == "text")
                images = [p for p in user if p.get("type") == "image_url"]
                server.requests.append({"text": text, "images": len(images), "model": body["model"]})
                hint = next((h for q, h in HINTS.items() if q in text), None)
                if self.path != "/v1/chat/completions" or hint is None:
                    data = json.dumps({"error": {"message": "unknown item", "type": "invalid_request_error"}})
                    code = 404
                else:
                    code = 200
                    data = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                                       "model": body["model"],
                                       "choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"role": "assistant", "content": json.dumps(hint)}}],
                                       "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}})
                raw = data.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _live_steps(task) -> int:
    """The highest step the training card's data (saved to the datastore by a refresh) shows, or 0."""
    from metaflow.cards import get_cards

    try:
        cards = [c for c in get_cards(task) if c.id == "training"]
        data = cards[0].get_data() if cards else None
    except Exception:  # noqa: BLE001 - not written yet
        return 0
    found = [int(c.get("value", 0)) for c in components(data) if c.get("type") == "progressBar"]
    return max(found, default=0)


async def _run_and_watch(runner, seen: dict) -> object:
    """Run the flow; while ``train`` runs, read its card data from the datastore (``seen``)."""
    from metaflow import namespace

    namespace(None)
    executing = await runner.async_run()
    while executing.returncode is None:
        await asyncio.sleep(0.5)
        try:
            run = executing.run
            task = run["train"].task if "train" in [s.id for s in run] else None
        except Exception:  # noqa: BLE001 - the run or the step is not there yet
            continue
        if task is None or task.finished:
            continue
        steps = _live_steps(task)
        if steps and not task.finished:
            seen.setdefault("first", (steps, time.time() - task.created_at.timestamp()))
            seen["last"] = steps
    await executing.wait()
    return executing


# -------------------------------------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    from metaflow import Runner, namespace

    tmp = tmp_path_factory.mktemp("own-data")
    project = tmp / "project"
    write_clevr_release(project / "CLEVR_v1.0")
    # 1. the conversion recipe of docs/data.md, as a user would run it
    (tmp / "convert_clevr.py").write_text(doc_block("convert-clevr", "python"))
    out = subprocess.run([sys.executable, str(tmp / "convert_clevr.py"), "CLEVR_v1.0", "val",
                          "CLEVR_v1.0/clevr-val.jsonl"], cwd=project, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # 2. the config of docs/data.md, pointed at this test's server, plus a test overlay
    with HintServer() as server:
        config = json.loads(doc_block("clevr-config", "json"))
        config["hints"]["generator"]["base_url"] = server.base_url
        (project / "clevr.json").write_text(json.dumps(config, indent=1))
        (project / "test.json").write_text(json.dumps({
            "extends": "clevr.json", "name": "clevr-test",
            "train": {"max_steps": STEPS, "checkpoint_every": 0},
            "tracking": {"card_refresh_s": 1},
            "retry": {"generate_hints": {"times": 0}, "train": {"times": 0}, "evaluate": {"times": 0}},
        }))
        workdir = tmp / "work"  # not the config's folder: its relative paths must still resolve
        (workdir / ".metaflow").mkdir(parents=True)
        old = Path.cwd()
        os.chdir(workdir)
        namespace(None)
        seen: dict = {}
        t0 = time.time()
        try:
            runner = Runner(str(FLOW), show_output=False, env=flow_env(workdir), cwd=str(workdir),
                            config=[("config", str(project / "test.json"))])
            _restore_typing()
            with runner:
                executing = asyncio.run(_run_and_watch(runner, seen))
                status, stderr = executing.status, executing.stderr
            _restore_typing()
            print(f"\n[timing] own-data flow: {time.time() - t0:.0f}s; live card first showed step "
                  f"{seen.get('first')}", file=sys.stderr)
            assert status == "successful", stderr[-6000:]
            yield {"run": executing.run, "server": server, "project": project, "tmp": tmp, "seen": seen}
        finally:
            _restore_typing()
            os.chdir(old)


def test_the_flow_runs_on_a_converted_public_vqa_set(own_run):
    run, server, project = own_run["run"], own_run["server"], own_run["project"]
    d = run.data
    # the converted items, found through paths relative to the config file's folder
    train = d.data_manifest["train"]
    assert train["count"] == len(SCENES) and Path(train["spec"]["path"]) == project / "CLEVR_v1.0/clevr-val.jsonl"
    assert all(len(it.images) == 1 and it.meta["answer_type"] == "vqa" for it in d.train_items)
    # hints came from the server, one request per item with its image, all usable, audit at its floor
    assert len(server.requests) == len(SCENES) and all(r["images"] == 1 for r in server.requests)
    assert d.config["hints"]["audit"]["floor"] == 0.9  # tiny-test.json's floor, not lowered
    assert d.hints["usable"].all() and d.audit_report["pass_rate"] >= 0.9
    assert set(d.hints["item_id"]) == {f"clevr-val-{i}" for i in range(len(SCENES))}
    # trained, evaluated with the vqa answer mode, samples kept for the report
    assert list(d.train_metrics["step"]) == list(range(1, STEPS + 1))
    ev = d.eval_results
    assert set(ev["benchmark"]) == {"clevr_val"} and set(ev["model"]) == {"base", "trained"}
    assert len(d.eval_samples) == 6 and set(d.eval_samples["benchmark"]) == {"clevr_val"}
    assert d.summary["hint_generator"].startswith("openai") and "clevr-val.jsonl" in d.summary["data_source"]["path"]


def test_the_training_card_shows_steps_while_train_runs(own_run):
    seen = own_run["seen"]
    assert seen.get("first"), "the training card's data never showed a step while train was running"
    first_step, after_s = seen["first"]
    assert 1 <= first_step <= STEPS, seen  # read while the train task was running
    # the final card replaced the live one
    html, comps = _card(own_run["run"]["train"].task, "training")
    assert not any(c.get("type") == "progressBar" for c in comps)
    assert "Per-step metrics" in json.dumps(comps)


def test_tensorboard_event_files_are_stored_with_the_run(own_run, tmp_path):
    from ptdpo.tracking import export_tensorboard, read_scalars

    files = own_run["run"].data.tensorboard_logs
    assert files and all(Path(name).name.startswith("events.out.tfevents.") for name in files)
    scalars = read_scalars(export_tensorboard(files, tmp_path / "tb"))
    assert [step for step, _ in scalars["train/reward"]] == list(range(1, STEPS + 1))
    assert {"train/ptd_loss", "train/truncated_frac", "train/student_entropy"} <= set(scalars)


# ------------------------------------------------------------------------------- the report, in a browser
def _card(task, card_id: str):
    from metaflow.cards import get_cards

    html = [c for c in get_cards(task) if c.id == card_id][0].get()
    return html, components(card_payloads(html))


def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: run scripts/setup.sh (it installs Debian's chromium package)"
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=timeout)


def screenshot(html: str, folder: Path, name: str, height: int, css: str = ""):
    from PIL import Image

    page = folder / f"{name}.html"
    page.write_text(html.replace("</head>", f"<style>{css}</style></head>", 1) if css else html)
    png = folder / f"{name}.png"
    out = chromium(f"--user-data-dir={folder / ('profile-' + name)}", f"--window-size=1200,{height}",
                   f"--screenshot={png}", page.as_uri())
    assert png.is_file(), out.stderr[-2000:]
    return Image.open(png).convert("RGB")


def ink(img, threshold: int = 235) -> tuple[int, tuple | None]:
    """(pixels darker than ``threshold`` in any channel, their bounding box)."""
    import numpy as np

    a = np.asarray(img)
    mask = (a < threshold).any(axis=2)
    if not mask.any():
        return 0, None
    ys, xs = np.nonzero(mask)
    return int(mask.sum()), (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def blue(img) -> int:
    """Pixels of matplotlib's default line colour (blue well above red and green)."""
    import numpy as np

    a = np.asarray(img).astype(int)
    return int(((a[..., 2] > a[..., 0] + 60) & (a[..., 2] > a[..., 1] + 20)).sum())


ONLY = ("body * {visibility: hidden !important} body {background: #fff !important} "
        "%s {visibility: visible !important}")


def test_the_report_card_reads_well_in_a_browser(own_run, tmp_path):
    html, comps = _card(own_run["run"]["report"].task, "report")
    # the rendered page's text (Metaflow draws the card with JavaScript: read the DOM after it ran)
    (tmp_path / "report.html").write_text(html)
    dom = chromium(f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", (tmp_path / "report.html").as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]*"', "", dom.stdout)))
    for sentence in ("Accuracy per benchmark (fraction of items answered correctly",
                     "What each metric on this card means", "truncation_rate",
                     "The first items of each benchmark as each model answered them",
                     "hint generator", "openai", "clevr-val.jsonl", "Resolved run config",
                     "One panel per metric, by training step"):
        assert sentence in text, sentence
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", dom.stdout, re.S)
             if "<img" not in c]
    assert cells and not [c for c in cells if c in ("-", "–", "")], "a bare dash or an empty table cell"
    acc = own_run["run"].data.eval_comparison
    if (acc["base"].fillna(0) == 0).all():  # the random tiny model: relative improvement is said in words
        assert "n/a: base accuracy is 0" in text and ("all zero" in text or "hit the token limit" in text)
    # a real screenshot at 1200 px: nothing reaches the right edge (a clipped table would)
    page = screenshot(html, tmp_path, "page", 12000)
    edge = page.crop((1188, 0, 1200, page.height))
    assert ink(edge, 240)[0] == 0, "something is clipped at the right edge of a 1200-px window"
    assert ink(page)[0] > 50_000  # the page is not blank
    # the chart alone: drawn (not empty axes), inside the window
    chart = screenshot(html, tmp_path, "chart", 12000, ONLY % 'img[alt="training curves"]')
    n, box = ink(chart)
    # the same panels as empty axes (frames, titles, ticks) ink about 8,000 pixels at this size; every
    # panel here holds a line or its state in words, and the lines are drawn in blue
    assert n > 12_000 and box is not None and box[2] < 1200, (n, box)
    assert blue(chart) > 1000, "no curve was drawn"
    # the sample images alone: present, small, inside the window
    thumbs = screenshot(html, tmp_path, "thumbs", 12000, ONLY % "td img")
    n, box = ink(thumbs)
    assert n > 500 and box is not None and box[2] < 1200, (n, box)
