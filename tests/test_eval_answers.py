"""The answer extractor: which answers name one option, which stay unparsed."""

from __future__ import annotations

import pytest

from salmonn.eval.answers import extract_choice, gold_index
from salmonn.eval.normalize import get_normalizer

CHOICES = ["a dog barking", "a cat", "rain", "no sound"]
BASIC = get_normalizer("basic")


@pytest.mark.parametrize(
    ("answer", "index", "how"),
    [
        ("B", 1, "letter"),
        ("(c)", None, "unparsed"),  # lower-case letters are words, not choice letters
        ("(C)", 2, "letter"),
        ("C.", 2, "letter"),
        ("D) no sound at all", 3, "letter"),
        ("I think the answer is (A).", 0, "letter"),
        ("Answer: B", 1, "letter"),
        ("The correct option is D", 3, "letter"),
        ("A cat meows.", 1, "text"),  # "A" starts a sentence: not a letter
        ("It sounds like rain on a window", 2, "text"),
        ("(A) or (B)", None, "unparsed"),
        ("a cat and a dog barking", None, "unparsed"),
        ("thunder", None, "unparsed"),
        ("E", None, "unparsed"),  # no fifth choice
    ],
)
def test_multiple_choice_answers(answer, index, how):
    found = extract_choice(answer, CHOICES, letters=True, normalize=BASIC)
    assert (found.index, found.how) == (index, how)
    assert found.parsed == (index is not None)


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Yes.", "yes"),
        ("No, these are two different speakers.", "no"),
        ("yes and no", None),
        ("The speaker is the same person", None),
        ("Y", None),  # no letters for labels
    ],
)
def test_yes_no_labels(answer, label):
    found = extract_choice(answer, ["yes", "no"], letters=False, normalize=BASIC)
    assert found.option == label


def test_a_label_inside_a_longer_found_label_gives_way():
    found = extract_choice("very happy", ["happy", "very happy"], letters=False, normalize=BASIC)
    assert found.option == "very happy"


@pytest.mark.parametrize(("answer", "index"), [("rain", 2), ("Rain.", 2), ("b", 1), ("(D)", 3)])
def test_gold_answer_by_text_or_letter(answer, index):
    assert gold_index(answer, CHOICES, BASIC) == index


def test_gold_answer_outside_the_choices():
    assert gold_index("snow", CHOICES, BASIC) is None
