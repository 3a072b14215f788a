"""The fixed text corpus the tiny tokenizer is trained on.

The corpus is committed as ``ptdpo/models/assets/corpus.txt``; this script wrote it
(``python scripts/build_corpus.py`` rewrites it). It lives outside the package because nothing at run
time needs it: the tokenizer reads the committed file, and any change to the text changes every tiny
model, so the file is rewritten only on purpose. Everything is drawn from a seeded
``random.Random``, so the output is the same on every machine and Python version (only
``Random.random``/``randrange``/``choice``/``shuffle`` on fixed lists are used).

The text covers what the tiny models will see in tests and demos: visual-reasoning questions
(counting, colours, shapes, spatial relations), numbers and arithmetic, LaTeX (``\\frac``,
``\\boxed``), ``<think>``/``<answer>`` formatted completions, structured hints (regions with boxes,
steps, traps), multiple-choice options and plain chat-like English.
"""

from __future__ import annotations

import random
from pathlib import Path

from ptdpo.answers.words import CHOICE_LETTERS

CORPUS_PATH = Path(__file__).resolve().parents[1] / "ptdpo" / "models" / "assets" / "corpus.txt"
CORPUS_SEED = 20261127
TARGET_CHARS = 280_000

COLOURS = [
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "black",
    "white",
    "gray",
    "brown",
    "pink",
    "cyan",
    "magenta",
    "golden",
    "silver",
    "dark blue",
    "light green",
    "teal",
]
SHAPES = [
    "cube",
    "sphere",
    "cylinder",
    "cone",
    "triangle",
    "square",
    "circle",
    "rectangle",
    "star",
    "hexagon",
    "pentagon",
    "diamond",
    "arrow",
    "ring",
    "pyramid",
    "ellipse",
    "trapezoid",
]
SIZES = ["small", "large", "tiny", "big", "medium-sized", "huge"]
MATERIALS = ["metal", "rubber", "plastic", "wooden", "glass", "matte", "shiny"]
OBJECTS = [
    "apple",
    "car",
    "dog",
    "cat",
    "bird",
    "book",
    "chair",
    "table",
    "cup",
    "bottle",
    "ball",
    "tree",
    "house",
    "boat",
    "bicycle",
    "person",
    "clock",
    "lamp",
    "flower",
    "banana",
    "train",
    "bus",
    "phone",
    "key",
    "coin",
    "box",
    "kite",
    "umbrella",
    "shoe",
    "hat",
]
SPATIAL = [
    "left of",
    "right of",
    "above",
    "below",
    "behind",
    "in front of",
    "next to",
    "inside",
    "on top of",
    "under",
    "near",
    "far from",
    "between",
    "across from",
    "beside",
]
REGIONS = [
    "top left",
    "top right",
    "bottom left",
    "bottom right",
    "center",
    "upper half",
    "lower half",
    "left side",
    "right side",
    "middle row",
    "first column",
    "last row",
]
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "twenty",
    "thirty",
    "hundred",
    "thousand",
    "half",
    "third",
    "quarter",
    "double",
    "twice",
    "triple",
]
CHART_WORDS = [
    "bar chart",
    "line graph",
    "pie chart",
    "table",
    "histogram",
    "scatter plot",
    "diagram",
    "map",
    "figure",
    "plot",
    "grid",
    "legend",
    "axis",
    "label",
    "caption",
    "scale",
]
GEOMETRY = [
    "angle",
    "radius",
    "diameter",
    "perimeter",
    "area",
    "volume",
    "side",
    "vertex",
    "edge",
    "face",
    "hypotenuse",
    "chord",
    "tangent",
    "parallel",
    "perpendicular",
    "midpoint",
    "bisector",
    "degree",
    "arc",
    "sector",
    "polygon",
    "quadrilateral",
    "isosceles",
    "right angle",
]
VERBS = [
    "count",
    "compare",
    "measure",
    "estimate",
    "identify",
    "locate",
    "find",
    "compute",
    "check",
    "add",
    "subtract",
    "multiply",
    "divide",
    "look at",
    "focus on",
    "notice",
    "read",
    "verify",
]
OPENERS = [
    "Hello!",
    "Hi there.",
    "Sure, here is the answer.",
    "Let me think about this.",
    "Good question.",
    "Thanks for asking.",
    "I can help with that.",
    "Okay.",
    "Great, let's see.",
    "Of course.",
    "I am not sure, but let me try.",
    "Here is what I see in the image.",
]
PROSE = [
    "A careful reader looks at every part of the picture before answering.",
    "The image shows a simple scene with several objects on a flat surface.",
    "Counting objects is easier when you group them by colour or by shape.",
    "Spatial words such as left, right, above and below describe where things are.",
    "When a question gives options, compare each option with what the image shows.",
    "Numbers can be written as digits, as words, or as fractions like one half.",
    "A chart has axes, labels and a legend; read them before reading the values.",
    "The answer should be short: a number, a word, a letter or a simple expression.",
    "Geometry problems often hide a right angle or a pair of parallel lines.",
    "If two objects overlap, the one in front hides part of the one behind it.",
    "It is raining today, so the children are playing inside with their blocks.",
    "The train leaves the station at nine in the morning and arrives at noon.",
    "She bought three apples and two oranges at the market on Saturday.",
    "The museum has a large hall with paintings of rivers, mountains and the sea.",
    "Please explain your reasoning step by step, and then state the final answer.",
    "The model must not guess; it should check the evidence in the picture first.",
    "Shadows, reflections and partial occlusion can make counting harder than it looks.",
    "A hint says where to look and what to avoid, but it never gives away the answer.",
]

# A general English lexicon, so the tokenizer learns a few thousand merges beyond the domain words.
NOUNS = """
time year people way day man woman child world school state family student group country problem
hand part place case week company system program question work government number night point home
water room mother area money story fact month lot right study book eye job word business issue side
kind head house service friend father power hour game line end member law car city community name
president team minute idea kid body information back parent face others level office door health
person art war history party result change morning reason research girl guy moment air teacher force
education foot boy age policy process music market sense nation plan college interest death experience
effect use class control care field development role effort rate heart drug show leader light voice
wife police mind price report decision son view relationship town road arm difference value building
action model season society tax director position player record paper space ground form event official
matter center couple site project activity star table need court oil situation cost industry figure
street image phone data picture practice piece land product doctor wall patient worker news test movie
north love support technology step baby computer type attention film tree source organization hair
window evidence population site garden river island mountain forest desert ocean village bridge tower
kitchen bedroom window pencil notebook ruler eraser marker crayon paint brush canvas camera screen
keyboard mouse printer battery engine wheel engine tire mirror ladder rope bucket basket bottle jar
plate bowl spoon fork knife napkin blanket pillow curtain carpet candle shelf drawer cabinet sofa
horse cow sheep goat pig chicken duck rabbit mouse lion tiger bear wolf fox deer elephant giraffe zebra
monkey whale dolphin shark turtle frog snake spider butterfly bee ant fish owl eagle parrot penguin
sun moon cloud rain snow wind storm rainbow sky planet galaxy comet shadow reflection surface corner
edge border pattern texture stripe dot spot layer row column cell block tile brick stone sand glass
"""
VERBS3 = """
sees holds moves finds shows takes makes gives keeps turns starts runs reads writes draws paints builds
covers opens closes carries pushes pulls throws catches lifts drops places points touches follows
crosses reaches leaves enters rises falls grows shrinks stands sits lies hangs floats sinks shines
glows appears disappears contains includes surrounds connects separates divides joins matches differs
looks seems becomes remains stays waits watches listens speaks answers asks explains describes
suggests believes remembers forgets learns teaches understands knows thinks decides chooses prefers
measures counts compares estimates calculates checks tests proves solves guesses notices ignores
"""
ADJECTIVES = """
good new first last long great little own other old right big high different small large next early
young important few public bad same able late hard major better economic strong possible whole free
military true federal international full special easy clear recent certain personal open red difficult
available likely short single medical current wrong private past foreign fine common poor natural
significant similar hot dead central happy serious ready simple left physical general environmental
financial blue democratic dark various entire close legal religious cold final main green nice huge
popular traditional cultural bright narrow wide thin thick heavy light soft smooth rough sharp round
flat curved straight empty crowded quiet loud fast slow warm cool wet dry clean dirty fresh ancient
modern strange familiar visible hidden tall deep shallow distant nearby upper lower inner outer
symmetric identical opposite adjacent vertical horizontal diagonal circular square triangular
"""
ADVERBS = """
also just now then even only very well still too here there really always never often sometimes
usually already almost again quickly slowly carefully clearly exactly nearly probably simply finally
together directly especially certainly actually perhaps quite rather maybe mostly partly fully
"""
PREPOSITIONS = [
    "in",
    "on",
    "at",
    "with",
    "from",
    "into",
    "over",
    "under",
    "through",
    "across",
    "along",
    "around",
    "behind",
    "beside",
    "between",
    "near",
    "toward",
    "without",
    "during",
]


def _num(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.5:
        return rng.randrange(0, 11)
    if r < 0.8:
        return rng.randrange(10, 101)
    return rng.randrange(100, 10000)


def _obj(rng: random.Random) -> str:
    parts = []
    if rng.random() < 0.5:
        parts.append(rng.choice(SIZES))
    if rng.random() < 0.7:
        parts.append(rng.choice(COLOURS))
    if rng.random() < 0.3:
        parts.append(rng.choice(MATERIALS))
    parts.append(rng.choice(SHAPES if rng.random() < 0.6 else OBJECTS))
    return " ".join(parts)


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "sh", "ch")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _words(block: str) -> list[str]:
    out: list[str] = []
    for w in block.split():
        if w not in out:
            out.append(w)
    return out


def _sentence(
    rng: random.Random, nouns: list[str], verbs: list[str], adjs: list[str], advs: list[str]
) -> str:
    kind = rng.randrange(0, 5)
    a, b = rng.choice(nouns), rng.choice(nouns)
    if kind == 0:
        s = f"the {rng.choice(adjs)} {a} {rng.choice(verbs)} the {b} {rng.choice(PREPOSITIONS)} the {rng.choice(nouns)}"
    elif kind == 1:
        s = f"{rng.choice(advs)} the {_plural(a)} near the {rng.choice(adjs)} {b} look {rng.choice(adjs)}"
    elif kind == 2:
        s = f"a {rng.choice(adjs)} {a} and {rng.choice(NUMBER_WORDS)} {_plural(b)} are {rng.choice(PREPOSITIONS)} the {rng.choice(nouns)}"
    elif kind == 3:
        s = f"why does the {a} {rng.choice(verbs)[:-1]} the {rng.choice(adjs)} {b}"
        return s[0].upper() + s[1:] + "?"
    else:
        s = f"my {a} {rng.choice(advs)} {rng.choice(verbs)} {_num(rng)} {_plural(b)}"
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", ";"])


def _question(rng: random.Random) -> tuple[str, str]:
    """A question and its short answer."""
    kind = rng.randrange(0, 10)
    if kind == 0:
        obj = _obj(rng)
        n = rng.randrange(0, 13)
        return f"How many {_plural(obj)} are there in the image?", str(n)
    if kind == 1:
        a, b = _obj(rng), _obj(rng)
        return f"What colour is the {rng.choice(SHAPES)} that is {rng.choice(SPATIAL)} the {b}?", rng.choice(
            COLOURS
        )
    if kind == 2:
        a, b = _obj(rng), _obj(rng)
        return f"Is the {a} {rng.choice(SPATIAL)} the {b}?", rng.choice(["yes", "no"])
    if kind == 3:
        x, y = _num(rng), _num(rng)
        op = rng.choice(["+", "-", "*"])
        val = x + y if op == "+" else x - y if op == "-" else x * y
        return f"What is {x} {op} {y}?", str(val)
    if kind == 4:
        a, b = rng.randrange(1, 10), rng.randrange(2, 13)
        return (
            f"What fraction of the {_plural(rng.choice(SHAPES))} are {rng.choice(COLOURS)}?",
            f"\\frac{{{a}}}{{{b}}}",
        )
    if kind == 5:
        return (
            f"Which shape is in the {rng.choice(REGIONS)} of the {rng.choice(CHART_WORDS)}?",
            rng.choice(SHAPES),
        )
    if kind == 6:
        g = rng.choice(GEOMETRY)
        return (
            f"In the figure, what is the {g} of the {rng.choice(['triangle', 'circle', 'square', 'polygon'])}?",
            str(_num(rng)),
        )
    if kind == 7:
        c1, c2 = rng.sample(COLOURS, 2)
        return (f"Are there more {c1} objects than {c2} objects?", rng.choice(["yes", "no"]))
    if kind == 8:
        return (
            f"What is the value of the {rng.choice(['tallest', 'shortest', 'second', 'last'])} bar "
            f"in the {rng.choice(CHART_WORDS)}?",
            str(_num(rng)),
        )
    return (
        f"Subtract all {rng.choice(COLOURS)} {_plural(rng.choice(SHAPES))}. How many objects are left?",
        str(rng.randrange(0, 10)),
    )


def _choices(rng: random.Random, answer: str) -> list[str]:
    opts = {answer}
    while len(opts) < 4:
        opts.add(
            str(rng.randrange(0, 20)) if answer.isdigit() else rng.choice(COLOURS + SHAPES + ["yes", "no"])
        )
    out = sorted(opts)
    rng.shuffle(out)
    return out


def _latex(rng: random.Random) -> str:
    a, b, c, d = (rng.randrange(1, 20) for _ in range(4))
    forms = [
        f"\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}} = \\frac{{{a * d + c * b}}}{{{b * d}}}",
        f"x^2 + {a}x + {b} = 0",
        f"\\sqrt{{{a * a}}} = {a}",
        f"{a} \\times {b} = {a * b}",
        f"\\angle ABC = {a * 5}^\\circ",
        f"\\pi r^2 = {a}\\pi",
        f"\\boxed{{{a + b}}}",
        f"\\left( {a} + {b} \\right) \\cdot {c} = {(a + b) * c}",
        f"\\frac{{1}}{{2}} \\cdot {2 * a} = {a}",
        "a^2 + b^2 = c^2",
        f"\\text{{area}} = \\frac{{1}}{{2}} \\cdot {a} \\cdot {b}",
        f"{a}\\% \\text{{ of }} {b * 100} = {a * b}",
        f"\\sin {a * 5}^\\circ \\approx 0.{rng.randrange(10, 99)}",
        f"\\frac{{{a}}}{{{a + b}}} \\le 1",
    ]
    return rng.choice(forms)


def _completion(rng: random.Random, question: str, answer: str) -> str:
    steps = []
    for _ in range(rng.randrange(1, 5)):
        v = rng.choice(VERBS)
        if rng.random() < 0.5:
            steps.append(f"I {v} the {_plural(_obj(rng))} {rng.choice(SPATIAL)} the {_obj(rng)}.")
        elif rng.random() < 0.5:
            steps.append(
                f"There are {rng.choice(NUMBER_WORDS)} {_plural(rng.choice(OBJECTS))} in the {rng.choice(REGIONS)}."
            )
        else:
            steps.append(f"So ${_latex(rng)}$.")
    boxed = f"\\boxed{{{answer}}}" if rng.random() < 0.4 else answer
    return f"<think>\n{' '.join(steps)}\n</think>\n<answer>{boxed}</answer>"


def _hint(rng: random.Random) -> str:
    lines = ["Hint:", "Regions:"]
    for _ in range(rng.randrange(1, 4)):
        x1, y1 = rng.randrange(0, 800), rng.randrange(0, 800)
        x2, y2 = x1 + rng.randrange(20, 200), y1 + rng.randrange(20, 200)
        lines.append(
            f"- [{x1}, {y1}, {x2}, {y2}] {rng.choice(COLOURS)} {rng.choice(SHAPES)}: "
            f"{rng.choice(VERBS)} the objects {rng.choice(SPATIAL)} it."
        )
    lines.append("Steps:")
    for i in range(rng.randrange(1, 4)):
        lines.append(
            f"{i + 1}. {rng.choice(VERBS).capitalize()} the {_plural(rng.choice(SHAPES))} in the {rng.choice(REGIONS)}."
        )
    lines.append("Traps:")
    lines.append(f"- Do not count the {rng.choice(COLOURS)} {rng.choice(SHAPES)} twice; it is partly hidden.")
    return "\n".join(lines)


def _chat(rng: random.Random) -> str:
    q, a = _question(rng)
    parts = [f"{rng.choice(OPENERS)} {q}"]
    if rng.random() < 0.4:
        opts = _choices(rng, a)
        parts.append("Options:\n" + "\n".join(f"{CHOICE_LETTERS[i]}. {o}" for i, o in enumerate(opts)))
        a = CHOICE_LETTERS[opts.index(a)]
    if rng.random() < 0.3:
        parts.append(_hint(rng))
    parts.append(
        "Think step by step inside <think> </think> tags, then give the final answer inside "
        "<answer> </answer> tags."
    )
    user = "\n\n".join(parts)
    assistant = _completion(rng, q, a)
    if rng.random() < 0.5:
        return f"User: {user}\nAssistant: {assistant}"
    return f"{user}\n{assistant}"


def generate_corpus(seed: int = CORPUS_SEED, target_chars: int = TARGET_CHARS) -> str:
    """The corpus text, a pure function of ``seed`` and ``target_chars``."""
    rng = random.Random(seed)
    chunks: list[str] = []
    # every digit string 0..999 once, so numbers tokenize into short pieces
    chunks.append(" ".join(str(i) for i in range(1000)))
    chunks.append(" ".join(NUMBER_WORDS + COLOURS + SHAPES + OBJECTS + SPATIAL + GEOMETRY + CHART_WORDS))
    nouns, verbs, adjs, advs = _words(NOUNS), _words(VERBS3), _words(ADJECTIVES), _words(ADVERBS)
    total = sum(len(c) for c in chunks)
    while total < target_chars:
        r = rng.random()
        if r < 0.2:
            c = " ".join(_sentence(rng, nouns, verbs, adjs, advs) for _ in range(rng.randrange(2, 6)))
        elif r < 0.5:
            c = _chat(rng)
        elif r < 0.6:
            c = " ".join(rng.choice(PROSE) for _ in range(rng.randrange(1, 4)))
        elif r < 0.75:
            c = f"${_latex(rng)}$ and ${_latex(rng)}$"
        elif r < 0.85:
            c = _hint(rng)
        else:
            q, a = _question(rng)
            c = f"Question: {q}\nAnswer: {a}"
        chunks.append(c)
        total += len(c) + 2
    return "\n\n".join(chunks) + "\n"


def write_corpus(path: Path = CORPUS_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generate_corpus(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_corpus())
