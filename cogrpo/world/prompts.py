"""GenEval-style prompts and metadata for the shapes world, and scenes that satisfy them.

Three prompt sources share one builder:

* the pretraining captions (every template, every colour-shape pair except the
  held-out ones);
* the fixed held-out evaluation set (``shapes_eval_metadata.jsonl``, built by
  ``build_eval_set`` with seed 0): GenEval's tags in roughly GenEval's
  proportions, including prompts that name a held-out colour-shape pair;
* the RL training prompts, which never equal an evaluation prompt and never name
  a held-out pair.

The world has only four shape classes, so tags with few distinct prompts
(single_object has four) repeat a prompt string on several rows of the
evaluation set. Each row has its own index and therefore its own image seeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import numpy as np

from cogrpo.benchmarks.geneval import RELATIONS, TAGS, load_metadata, relative_position
from cogrpo.world.render import COLORS, GRID_ALIGN, IMAGE_SIZE, PLURALS, SHAPES, SIZES, DrawnObject, boxes_apart, draw

# Colour-shape pairs that never appear in pretraining images or RL training
# prompts, so the evaluation measures compositional generalisation on them.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("pink", "circle"),
        ("brown", "circle"),
        ("purple", "square"),
        ("orange", "square"),
        ("blue", "triangle"),
        ("white", "triangle"),
        ("yellow", "cross"),
        ("green", "cross"),
    }
)
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
# Tag weights of the pretraining captions.
PRETRAIN_TAG_WEIGHTS = {
    "single_object": 0.22,
    "two_object": 0.16,
    "counting": 0.18,
    "colors": 0.16,
    "position": 0.14,
    "color_attr": 0.14,
}
EVAL_SET_RESOURCE = "shapes_eval_metadata.jsonl"


def with_article(phrase: str) -> str:
    """Prefix ``phrase`` with "a" or "an"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def make_metadata(tag: str, objects: Sequence[tuple[str, str | None]], *, count: int = 1, relation: str | None = None) -> dict[str, Any]:
    """Build the GenEval metadata object of one prompt.

    ``objects`` lists (shape, colour or None) per include clause. For ``position``
    the second object is placed ``relation`` of the first, as in GenEval, where
    the prompt reads "a photo of a <second> <relation> a <first>".
    """
    if tag not in TAGS:
        raise ValueError(f"invalid tag {tag!r}; allowed: {', '.join(TAGS)}")
    for shape, color in objects:
        if shape not in SHAPES:
            raise ValueError(f"unknown class {shape!r}; allowed: {', '.join(SHAPES)}")
        if color is not None and color not in COLORS:
            raise ValueError(f"unknown color {color!r}; allowed: {', '.join(COLORS)}")

    def clause(shape: str, color: str | None, n: int = 1) -> dict[str, Any]:
        out: dict[str, Any] = {"class": shape, "count": n}
        if color is not None:
            out["color"] = color
        return out

    def phrase(shape: str, color: str | None) -> str:
        return with_article(f"{color} {shape}" if color else shape)

    if tag == "single_object":
        (shape, _), = objects
        return {"tag": tag, "include": [clause(shape, None)], "prompt": f"a photo of {phrase(shape, None)}"}
    if tag == "two_object":
        (a, _), (b, _) = objects
        return {"tag": tag, "include": [clause(a, None), clause(b, None)], "prompt": f"a photo of {phrase(a, None)} and {phrase(b, None)}"}
    if tag == "counting":
        (shape, _), = objects
        if count not in NUMBER_WORDS:
            raise ValueError(f"invalid count {count}; allowed: {sorted(NUMBER_WORDS)}")
        return {
            "tag": tag,
            "include": [clause(shape, None, count)],
            "exclude": [clause(shape, None, count + 1)],
            "prompt": f"a photo of {NUMBER_WORDS[count]} {PLURALS[shape]}",
        }
    if tag == "colors":
        (shape, color), = objects
        return {"tag": tag, "include": [clause(shape, color)], "prompt": f"a photo of {phrase(shape, color)}"}
    if tag == "position":
        (target, _), (subject, _) = objects
        if relation not in RELATIONS:
            raise ValueError(f"invalid relation {relation!r}; allowed: {', '.join(RELATIONS)}")
        second = clause(subject, None)
        second["position"] = [relation, 0]
        return {
            "tag": tag,
            "include": [clause(target, None), second],
            "prompt": f"a photo of {phrase(subject, None)} {relation} {phrase(target, None)}",
        }
    (a, color_a), (b, color_b) = objects
    return {
        "tag": tag,
        "include": [clause(a, color_a), clause(b, color_b)],
        "prompt": f"a photo of {phrase(a, color_a)} and {phrase(b, color_b)}",
    }


def uses_held_out_pair(entry: dict[str, Any]) -> bool:
    """Return True when a clause of ``entry`` names a held-out colour-shape pair."""
    return any((c.get("color"), c["class"]) in HELD_OUT_PAIRS for c in entry["include"])


def all_prompts(tag: str) -> list[dict[str, Any]]:
    """Enumerate every metadata object of ``tag`` that the templates can produce."""
    out = []
    if tag == "single_object":
        out = [make_metadata(tag, [(s, None)]) for s in SHAPES]
    elif tag == "two_object":
        out = [make_metadata(tag, [(a, None), (b, None)]) for a in SHAPES for b in SHAPES if a != b]
    elif tag == "counting":
        out = [make_metadata(tag, [(s, None)], count=n) for s in SHAPES for n in NUMBER_WORDS]
    elif tag == "colors":
        out = [make_metadata(tag, [(s, c)]) for s in SHAPES for c in COLORS]
    elif tag == "position":
        out = [
            make_metadata(tag, [(t, None), (s, None)], relation=r)
            for t in SHAPES for s in SHAPES if s != t for r in RELATIONS
        ]
    elif tag == "color_attr":
        out = [
            make_metadata(tag, [(a, ca), (b, cb)])
            for a in SHAPES for b in SHAPES if a != b for ca in COLORS for cb in COLORS if ca != cb
        ]
    else:
        raise ValueError(f"invalid tag {tag!r}; allowed: {', '.join(TAGS)}")
    return out


# --------------------------------------------------------------------------- evaluation and training prompts


def build_eval_set(seed: int = 0) -> list[dict[str, Any]]:
    """Build the held-out evaluation set (about 270 rows, GenEval-like tag shares).

    Unique prompts per tag: single_object 4, two_object 6, counting 6, colors 20
    (all 8 held-out pairs among them), position 24, color_attr 50 (half of them
    name a held-out pair). Rows per tag follow GenEval's 80/99/80/94/100/100
    proportions at half scale by repeating prompts.
    """
    rng = np.random.default_rng(seed)

    def pick(items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
        return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False))]

    colors_all = all_prompts("colors")
    held = [e for e in colors_all if uses_held_out_pair(e)]
    seen = [e for e in colors_all if not uses_held_out_pair(e)]
    color_attr_all = all_prompts("color_attr")
    attr_held = [e for e in color_attr_all if uses_held_out_pair(e)]
    attr_seen = [e for e in color_attr_all if not uses_held_out_pair(e)]
    unique = {
        "single_object": all_prompts("single_object"),
        "two_object": pick(all_prompts("two_object"), 6),
        "counting": pick(all_prompts("counting"), 6),
        "colors": held + pick(seen, 12),
        "position": pick(all_prompts("position"), 24),
        "color_attr": pick(attr_held, 25) + pick(attr_seen, 25),
    }
    rows_per_tag = {"single_object": 40, "two_object": 50, "counting": 40, "colors": 47, "position": 50, "color_attr": 50}
    rows = []
    for tag in TAGS:
        prompts = unique[tag]
        for i in range(rows_per_tag[tag]):
            rows.append(prompts[i % len(prompts)])
    return rows


def load_eval_set() -> list[dict[str, Any]]:
    """Load the committed held-out evaluation set of the shapes world."""
    path = resources.files("cogrpo.data").joinpath(EVAL_SET_RESOURCE)
    with resources.as_file(path) as real_path:
        return load_metadata(real_path, allowed_classes=SHAPES)


def sample_metadata(rng: np.random.Generator, tag_weights: dict[str, float] | None = None) -> dict[str, Any]:
    """Sample one prompt of any tag that names no held-out colour-shape pair."""
    weights = tag_weights or PRETRAIN_TAG_WEIGHTS
    tags = list(weights)
    p = np.asarray([weights[t] for t in tags], dtype=np.float64)
    tag = tags[rng.choice(len(tags), p=p / p.sum())]
    shapes = list(SHAPES)
    while True:
        if tag == "single_object":
            entry = make_metadata(tag, [(shapes[rng.integers(len(shapes))], None)])
        elif tag == "two_object":
            a, b = rng.choice(len(shapes), size=2, replace=False)
            entry = make_metadata(tag, [(shapes[a], None), (shapes[b], None)])
        elif tag == "counting":
            entry = make_metadata(tag, [(shapes[rng.integers(len(shapes))], None)], count=int(rng.integers(2, 5)))
        elif tag == "colors":
            entry = make_metadata(tag, [(shapes[rng.integers(len(shapes))], COLORS[rng.integers(len(COLORS))])])
        elif tag == "position":
            a, b = rng.choice(len(shapes), size=2, replace=False)
            entry = make_metadata(tag, [(shapes[a], None), (shapes[b], None)], relation=RELATIONS[rng.integers(4)])
        else:
            a, b = rng.choice(len(shapes), size=2, replace=False)
            ca, cb = rng.choice(len(COLORS), size=2, replace=False)
            entry = make_metadata(tag, [(shapes[a], COLORS[ca]), (shapes[b], COLORS[cb])])
        if not uses_held_out_pair(entry):
            return entry


class TrainingPrompts:
    """The RL training prompt generator: no held-out pair, no evaluation prompt.

    ``prompts(n)`` draws with a seeded generator; the same seed gives the same
    sequence, so a resumed run sees the prompts an uninterrupted run would.
    """

    def __init__(self, excluded_prompts: Iterable[str] | None = None, tag_weights: dict[str, float] | None = None):
        excluded = set(excluded_prompts) if excluded_prompts is not None else {e["prompt"] for e in load_eval_set()}
        self.pool = []
        for tag in TAGS:
            if tag_weights is not None and tag_weights.get(tag, 0) <= 0:
                continue
            for entry in all_prompts(tag):
                if entry["prompt"] not in excluded and not uses_held_out_pair(entry):
                    self.pool.append(entry)
        if not self.pool:
            raise ValueError("no training prompt is left after excluding the evaluation prompts and held-out pairs")
        self.excluded = excluded

    def sample(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        """Draw ``n`` distinct-index prompts uniformly from the pool."""
        return [self.pool[i] for i in rng.integers(len(self.pool), size=n)]


# --------------------------------------------------------------------------- scenes


def _random_object(
    rng: np.random.Generator, shape: str, color: str | None, image_size: int, allow_held_out: bool, sizes: tuple[int, ...]
) -> DrawnObject:
    if color is None:
        choices = [c for c in COLORS if allow_held_out or (c, shape) not in HELD_OUT_PAIRS]
        color = choices[rng.integers(len(choices))]
    size = int(sizes[rng.integers(len(sizes))])
    slots = (image_size - size) // GRID_ALIGN + 1
    x0 = int(rng.integers(slots)) * GRID_ALIGN
    y0 = int(rng.integers(slots)) * GRID_ALIGN
    return DrawnObject(shape, color, x0, y0, size)


def scene_for(entry: dict[str, Any], rng: np.random.Generator, image_size: int = IMAGE_SIZE, allow_held_out: bool = False, max_tries: int = 2000) -> list[DrawnObject]:
    """Sample objects that satisfy ``entry`` exactly (no extra objects).

    Objects keep the minimum gap; a ``position`` clause holds with exactly the
    requested relation under GenEval's rule, so the image is unambiguous.
    """
    include = entry["include"]
    specs: list[tuple[str, str | None]] = []
    for clause in include:
        specs += [(clause["class"], clause.get("color"))] * clause["count"]
    # Crowded scenes get small objects only, so that they fit with the minimum gap.
    sizes = SIZES if len(specs) <= 2 else SIZES[:1]
    for _ in range(max_tries):
        objects: list[DrawnObject] = []
        for shape, color in specs:
            for _ in range(50):
                candidate = _random_object(rng, shape, color, image_size, allow_held_out, sizes)
                if all(boxes_apart(candidate, other) for other in objects):
                    objects.append(candidate)
                    break
        if len(objects) < len(specs):
            continue
        if entry["tag"] == "position":
            relation = include[1]["position"][0]
            if relative_position(objects[1].box, objects[0].box) != {relation}:
                continue
        return objects
    raise RuntimeError(f"could not place the objects of {entry['prompt']!r} in a {image_size}px image after {max_tries} tries")


def render_entry(entry: dict[str, Any], rng: np.random.Generator, image_size: int = IMAGE_SIZE, allow_held_out: bool = False) -> np.ndarray:
    """Draw one image that satisfies ``entry``."""
    return draw(scene_for(entry, rng, image_size, allow_held_out), image_size)
