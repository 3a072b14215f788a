"""Procedurally drawn visual-reasoning scenes with exact answers, evidence boxes and answer-free hints.

Five task families of graded difficulty (1..5: more objects, more near-miss distractors, more
attributes to combine):

- ``count_attr``   "How many red circles are there?"                          -> integer
- ``spatial``      "Is the red circle above the green triangle?"              -> yes / no
                   "What colour is the leftmost circle?"                       -> colour / shape name
- ``compare``      "Are there more circles than squares?"                      -> yes / no
                   "Which colour appears most often?" (half as multiple choice) -> colour / shape / letter
- ``arith_count``  "How many circles and triangles are there in total?"        -> integer
                   "How many more red shapes than blue shapes are there?"
- ``arith_digits`` numbers drawn as text: "What is the sum of the numbers?",
                   "What is the largest number minus the smallest number?"   -> integer

Every item's ``meta`` holds (see :func:`generate_synthetic`): ``family``, ``template``,
``difficulty``, ``ood``, ``seed``, ``index``, ``width``, ``height``, ``objects`` (shape, color, size,
bbox in 0..1000 normalised coordinates, ``value`` for numbers), ``query`` (the question in structured
form, from which the answer follows with ``objects`` alone), ``evidence`` (boxes and answer-free labels
of the objects that matter), ``reasoning`` (worked steps with values), ``method`` and ``traps``
(answer-free: never a digit, a number word or the answer; built for oracle hints).

In-distribution (``ood=False``) versus out-of-distribution (``ood=True``) at the same difficulty:

- OOD scenes hold 4 more objects (objects shrink when a scene gets crowded);
- the colour/shape pairs in :data:`HELD_OUT` never appear in-distribution; OOD scenes use them freely
  and prefer them for questions that name a colour and a shape;
- counts asked about are 1..5 in-distribution and 2..9 OOD; drawn numbers are 1..19 in-distribution
  (1..9 at difficulty 1) and 20..99 OOD.

Generation is deterministic: item ``index`` of ``(seed, split, ood)`` depends on nothing else, so a
shorter run is a prefix of a longer one.

Layout of the package: ``scene`` (palette, descriptors, sampling, answer-free labels and traps),
``drawing`` (masks and layout), one function per question template in ``counting``, ``spatial`` and
``digits``, the template and family registry in ``registry``, and items in ``generate``.
"""

from ptdpo.data.synthetic.drawing import BACKGROUND, SIZE_FRACTION, TEXT_FRACTION
from ptdpo.data.synthetic.generate import (
    GENERATOR_VERSION,
    generate_item,
    generate_synthetic,
    render_evidence,
    synthetic_id,
)
from ptdpo.data.synthetic.registry import FAMILIES, FAMILY_SPECS, TEMPLATES
from ptdpo.data.synthetic.scene import (
    COLOR_NAMES,
    COLORS,
    CONFUSABLE,
    HELD_OUT,
    NUMBER_COLORS,
    SHAPES,
    SIZES,
    matches,
    mentions_number,
    mentions_term,
    noun,
)

__all__ = [
    "BACKGROUND", "COLORS", "COLOR_NAMES", "CONFUSABLE", "FAMILIES", "FAMILY_SPECS", "GENERATOR_VERSION",
    "HELD_OUT", "NUMBER_COLORS", "SHAPES", "SIZES", "SIZE_FRACTION", "TEMPLATES", "TEXT_FRACTION",
    "generate_item", "generate_synthetic", "matches", "mentions_number", "mentions_term", "noun",
    "render_evidence", "synthetic_id",
]
