"""Text for the language-understanding task: a generated GLUE-like corpus on a fresh
machine, and GLUE's own `.tsv` files from `--data-root`.

Generated data (deterministic from the seed) mixes GLUE's two input kinds:
- single sentences (like SST-2): "the critic said the film was not very good , but the
  music was dull" -> negative. Polarity comes from an adjective, flipped by a negator in
  its clause ("not", "never", "hardly"); with "but", the second clause decides.
- sentence pairs (like MRPC): the second sentence restates the first with synonyms,
  passive voice or reordered adjuncts (label 1), or changes who did what to whom (label 0).
  Both kinds of pair share every content word, so counting words cannot solve it.

Token ids: 0 [PAD], 1 [CLS], 2 [SEP], 3 [UNK], then words; an input is
[CLS] sentence [SEP] (second sentence [SEP]) padded to a fixed length.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from .errors import DataError

PAD, CLS, SEP, UNK = 0, 1, 2, 3
SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]

POSITIVE = ["good", "great", "superb", "charming", "moving", "clever", "lovely", "gripping", "witty", "fresh"]
NEGATIVE = ["bad", "dull", "awful", "clumsy", "tedious", "bland", "messy", "shallow", "stale", "weak"]
NEGATORS = ["not", "never", "hardly"]
INTENSIFIERS = ["very", "quite", "really", "so", "rather"]
SUBJECTS = [
    "the film",
    "the plot",
    "the music",
    "the cast",
    "the ending",
    "the script",
    "the story",
    "the show",
]
PEOPLE = ["the critic", "my friend", "the audience", "a reviewer", "the director", "my sister"]
SAY = ["said", "thought", "felt", "claimed", "wrote"]
# (agent, verb, its synonym, patient) slots of the paraphrase pairs
AGENTS = [
    "the cat",
    "the dog",
    "the teacher",
    "the farmer",
    "the pilot",
    "the doctor",
    "the child",
    "the guard",
]
VERBS = [
    ("chased", "pursued"),
    ("helped", "assisted"),
    ("called", "phoned"),
    ("saw", "noticed"),
    ("met", "encountered"),
    ("followed", "tracked"),
    ("praised", "commended"),
    ("warned", "alerted"),
]
PLACES = ["in the park", "at noon", "near the river", "after lunch", "on monday", "by the station"]


def vocabulary() -> list[str]:
    words: set[str] = {",", ".", "but", "and", "was", "were", "by", "the"}
    for group in (POSITIVE, NEGATIVE, NEGATORS, INTENSIFIERS, SAY):
        words.update(group)
    for group in (SUBJECTS, PEOPLE, AGENTS, PLACES):
        for phrase in group:
            words.update(phrase.split())
    for a, b in VERBS:
        words.update((a, b))
    return SPECIALS + sorted(words)


def _clause(rng, positive: bool) -> tuple[str, bool]:
    """A clause whose polarity is `positive`, possibly via a negated adjective of the other polarity."""
    negate = rng.random() < 0.4
    pool = (NEGATIVE if positive else POSITIVE) if negate else (POSITIVE if positive else NEGATIVE)
    words = [SUBJECTS[rng.integers(len(SUBJECTS))], "was"]
    if negate:
        words.append(NEGATORS[rng.integers(len(NEGATORS))])
    if rng.random() < 0.5:
        words.append(INTENSIFIERS[rng.integers(len(INTENSIFIERS))])
    words.append(pool[rng.integers(len(pool))])
    return " ".join(words), positive


def sentiment(rng) -> tuple[str, str, int]:
    label = bool(rng.integers(2))
    if rng.random() < 0.5:  # "X , but Y": Y decides, X has the other polarity
        first, _ = _clause(rng, not label)
        second, _ = _clause(rng, label)
        text = f"{first} , but {second}"
    else:
        text, _ = _clause(rng, label)
    if rng.random() < 0.5:
        text = f"{PEOPLE[rng.integers(len(PEOPLE))]} {SAY[rng.integers(len(SAY))]} {text}"
    return text + " .", "", int(label)


def paraphrase(rng) -> tuple[str, str, int]:
    a, p = rng.choice(len(AGENTS), 2, replace=False)
    agent, patient = AGENTS[a], AGENTS[p]
    verb, synonym = VERBS[rng.integers(len(VERBS))]
    place = PLACES[rng.integers(len(PLACES))]
    first = f"{agent} {verb} {patient} {place} ."
    label = int(rng.integers(2))
    if not label:  # same words, other meaning: roles swapped (in either voice)
        agent, patient = patient, agent
    v = synonym if rng.random() < 0.5 else verb
    style = rng.integers(3)
    if style == 0:
        second = f"{agent} {v} {patient} {place} ."
    elif style == 1:
        second = f"{patient} was {v} by {agent} {place} ."
    else:
        second = f"{place} {agent} {v} {patient} ."
    return first, second, label


def generate(count: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    firsts, seconds, labels = [], [], []
    for _ in range(count):
        a, b, y = (sentiment if rng.random() < 0.5 else paraphrase)(rng)
        firsts.append(a)
        seconds.append(b)
        labels.append(y)
    return firsts, seconds, np.asarray(labels, dtype=np.int64)


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def encode(firsts: list[str], seconds: list[str], vocab: dict[str, int], length: int) -> np.ndarray:
    """[CLS] a [SEP] (b [SEP]) as ids, truncated (each side in turn) and padded to `length`."""
    out = np.zeros((len(firsts), length), dtype=np.int64)
    for i, (a, b) in enumerate(zip(firsts, seconds)):
        ta = [vocab.get(w, UNK) for w in tokenize(a)]
        tb = [vocab.get(w, UNK) for w in tokenize(b)] if b else []
        budget = length - 2 - (1 if tb else 0)
        while len(ta) + len(tb) > budget:
            if len(ta) >= len(tb):
                ta.pop()
            else:
                tb.pop()
        ids = [CLS, *ta, SEP] + ([*tb, SEP] if tb else [])
        out[i, : len(ids)] = ids
    return out


# GLUE tasks this reader knows: folder -> (train file, held-out file, first col, second col, label col)
GLUE: dict[str, tuple[str, str, str | int, str | None, str | int]] = {
    "SST-2": ("train.tsv", "dev.tsv", "sentence", None, "label"),
    "CoLA": ("train.tsv", "dev.tsv", 3, None, 1),  # CoLA has no header row
    "MRPC": ("train.tsv", "dev.tsv", "#1 String", "#2 String", "Quality"),
    "QQP": ("train.tsv", "dev.tsv", "question1", "question2", "is_duplicate"),
    "RTE": ("train.tsv", "dev.tsv", "sentence1", "sentence2", "label"),
}


def read_glue(folder: Path, split: str) -> tuple[list[str], list[str], np.ndarray]:
    """(first sentences, second sentences or "", labels 0/1) of one GLUE task folder."""
    name = folder.name
    train_file, test_file, c1, c2, cl = GLUE[name]
    path = folder / (train_file if split == "train" else test_file)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"not a readable GLUE .tsv: {exc}") from None
    if isinstance(c1, str):
        if not rows or c1 not in rows[0] or cl not in rows[0] or (c2 and c2 not in rows[0]):
            raise DataError(path, f"expected a header with {c1!r}, {cl!r}" + (f" and {c2!r}" if c2 else ""))
        header, rows = rows[0], rows[1:]
        i1, il = header.index(c1), header.index(cl)
        i2 = header.index(c2) if c2 else None
    else:
        assert isinstance(cl, int)  # a task without a header row gives every column by index
        i1, il, i2 = c1, cl, None
    firsts, seconds, labels = [], [], []
    for n, row in enumerate(rows, start=2 if isinstance(c1, str) else 1):
        try:
            label = {"0": 0, "1": 1, "not_entailment": 0, "entailment": 1}[row[il].strip()]
            firsts.append(row[i1])
            seconds.append(row[i2] if i2 is not None else "")
        except (IndexError, KeyError):
            raise DataError(
                path, f"line {n}: expected {max(i1, il, i2 or 0) + 1} tab-separated columns with a 0/1 label"
            ) from None
        labels.append(label)
    if not labels:
        raise DataError(path, "no examples")
    return firsts, seconds, np.asarray(labels, dtype=np.int64)


def build_vocabulary(texts: list[str], limit: int) -> list[str]:
    """Special tokens, then the training split's words by frequency (ties by spelling)."""
    counts: dict[str, int] = {}
    for t in texts:
        for w in tokenize(t):
            counts[w] = counts.get(w, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))[: limit - len(SPECIALS)]
    return SPECIALS + words
