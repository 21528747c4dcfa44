"""The answer extractor for classification, yes/no and multiple-choice accuracy.

An answer is *parsed* when it names exactly one option; otherwise it is *unparsed*, counts as wrong,
and is reported (never dropped from the denominator). The rules, in order:

1. **Choice letter** (multiple choice only). The letters are ``A``, ``B``, ... in the order of
   ``choices``. A letter counts when the answer is that letter alone (``"B"``, ``"(B)"``, ``"B."``),
   starts with it followed by ``)``, ``.`` or ``:`` (``"B) a dog"``), holds it in parentheses
   anywhere (``"... is (B)"``), or follows ``answer``/``option``/``choice`` (``"the answer is B"``).
   A bare capital inside a sentence (``"A dog barks"``) is not a letter. Several different letters:
   unparsed.
2. **Option text.** Answer and options are normalised (``basic``: lower case, punctuation removed);
   an option counts when its words appear as a whole-word run in the answer. An option found only
   inside another found option (``"happy"`` in ``"very happy"``) gives way to it. Exactly one
   option left: parsed; none or several: unparsed.

For classification without ``choices`` (emotion, speaker verification), the options are the labels:
given by the preset (``yes``/``no``) or the distinct references of the run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_ALONE = re.compile(r"^\s*\(?([A-Z])\)?\s*[.:)]?\s*$")
_LEADING = re.compile(r"^\s*\(?([A-Z])(?:\)|[.:](?=\s|$))")
_PARENTHESISED = re.compile(r"\(([A-Z])\)")
_NAMED = re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\b(?![a-z'])", re.I)


@dataclass(frozen=True)
class Extracted:
    """What an answer was read as.

    Attributes:
        index: the chosen option's index in ``options``, or ``None`` when unparsed.
        option: the chosen option's text, or ``None``.
        how: ``"letter"``, ``"text"`` or ``"unparsed"``.
    """

    index: int | None
    option: str | None
    how: str

    @property
    def parsed(self) -> bool:
        return self.index is not None


def extract_choice(
    answer: str,
    options: Sequence[str],
    *,
    letters: bool,
    normalize: Callable[[str], str],
) -> Extracted:
    """Read ``answer`` as one of ``options`` (see the module's rules).

    Args:
        answer: the model's answer.
        options: the choices (multiple choice) or the labels (classification).
        letters: whether choice letters count (multiple choice).
        normalize: the text normaliser for rule 2.
    """
    if letters:
        found = _letters(answer, len(options))
        if len(found) == 1:
            index = found.pop()
            return Extracted(index, options[index], "letter")
        if len(found) > 1:
            return Extracted(None, None, "unparsed")
    text = f" {normalize(answer)} "
    hits = []
    for i, option in enumerate(options):
        words = normalize(option).split()
        if words and f" {' '.join(words)} " in text:
            hits.append((i, " ".join(words)))
    if len(hits) > 1:  # drop options whose text lies inside another found option's text
        hits = [
            (i, w) for i, w in hits if not any(w != o and f" {w} " in f" {o} " for _, o in hits)
        ]
    if len({w for _, w in hits}) == 1:
        index = hits[0][0]
        return Extracted(index, options[index], "text")
    return Extracted(None, None, "unparsed")


def _letters(answer: str, count: int) -> set[int]:
    valid = LETTERS[:count]
    found: list[str] = []
    for pattern in (_ALONE, _LEADING):
        match = pattern.match(answer)
        if match:
            found.append(match.group(1))
    found += _PARENTHESISED.findall(answer)
    found += [m.upper() for m in _NAMED.findall(answer)]
    return {valid.index(letter) for letter in found if letter in valid}


def gold_index(answer: str, choices: Sequence[str], normalize: Callable[[str], str]) -> int | None:
    """The index of the right choice: ``answer`` is a choice's text or its letter; ``None`` if
    neither."""
    target = normalize(answer).split()
    for i, choice in enumerate(choices):
        if normalize(choice).split() == target:
            return i
    stripped = answer.strip().strip("().").upper()
    if len(stripped) == 1 and stripped in LETTERS[: len(choices)]:
        return LETTERS.index(stripped)
    return None
