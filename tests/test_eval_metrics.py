"""Scores of ``salmonn.eval.metrics`` against values worked out by hand in each test."""

from __future__ import annotations

import math
import shutil
from collections import Counter

import pytest

from salmonn.errors import ConfigError
from salmonn.eval.metrics import score


def _records(pairs):
    return [{"text": hyp, "reference": ref, "error": None} for hyp, ref in pairs]


def test_wer_is_corpus_level_with_the_edits_counted_by_hand():
    pairs = [
        ("the cat sat on mat", "the cat sat on the mat"),  # 1 deletion / 6 words
        ("a quick brown dog", "the quick brown fox"),  # 2 substitutions / 4 words
        ("hello there world", "hello world"),  # 1 insertion / 2 words
    ]
    summary, outcomes = score(_records(pairs), "wer", normalizer="none")
    assert [o["errors"] for o in outcomes] == [1, 2, 1]
    assert summary["score"] == pytest.approx((1 + 2 + 1) / (6 + 4 + 2))
    assert summary["counts"] == {
        "substitutions": 2,
        "deletions": 1,
        "insertions": 1,
        "hits": 9,
        "reference_length": 12,
    }
    assert summary["n"] == 3 and summary["n_failed"] == 0


def test_corpus_level_wer_differs_from_the_mean_of_item_rates():
    # a short item with one error and a long clean one: 1/12 corpus-level, (1/1 + 0/11)/2 per item
    long = "one two three four five six seven eight nine ten eleven"
    pairs = [("yes", "no"), (long, long)]
    summary, _ = score(_records(pairs), "wer", normalizer="none")
    assert summary["score"] == pytest.approx(1 / 12)
    assert not math.isclose(summary["score"], (1 / 1 + 0 / 11) / 2)


def test_the_whisper_normaliser_changes_the_wer():
    pairs = [("Mr. Smith paid twenty dollars!", "mister smith paid $20")]
    raw, _ = score(_records(pairs), "wer", normalizer="none")
    normalised, outcomes = score(_records(pairs), "wer")  # English WER: whisper-en by default
    # raw: "Mr." "Smith" "twenty" "dollars!" vs mister smith $20: 3 substitutions, 1 insertion / 4
    assert raw["score"] == pytest.approx(4 / 4)
    assert normalised["score"] == pytest.approx(0.0)
    assert normalised["normalizer"]["name"] == "whisper-en"
    assert normalised["normalizer"]["version"].startswith("whisper-normalizer ")
    assert outcomes[0]["normalized_text"] == outcomes[0]["normalized_reference"]


def test_a_failed_record_counts_as_all_deletions_and_is_counted():
    records = _records([("a b", "a b")]) + [
        {"text": None, "reference": "c d e", "error": "cannot decode"}
    ]
    summary, _ = score(records, "wer", normalizer="none")
    assert summary["n_failed"] == 1
    assert summary["score"] == pytest.approx(3 / 5)


def test_chinese_cer_ignores_spaces_and_counts_characters():
    summary, _ = score(_records([("我 爱 北京", "我爱南京")]), "cer", language="zh")
    assert summary["score"] == pytest.approx(1 / 4)
    assert summary["unit"] == "characters"


def _bleu_by_hand(hyp: list[str], ref: list[str]) -> float:
    """Corpus BLEU of one sentence pair, four n-gram orders, no smoothing needed (all matches > 0)."""
    logs = []
    for n in range(1, 5):
        h = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        matches = sum(min(c, r[g]) for g, c in h.items())
        logs.append(math.log(matches / sum(h.values())))
    bp = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return 100 * bp * math.exp(sum(logs) / 4)


def test_bleu_matches_the_formula_and_names_its_signature():
    hyp = "the cat sat on the red mat today"
    ref = "the cat sat on the mat today"
    summary, _ = score(_records([(hyp, ref)]), "bleu")
    expected = _bleu_by_hand(hyp.split(), ref.split())
    assert summary["score"] == pytest.approx(expected, abs=1e-6)
    assert "tok:13a" in summary["signature"]
    assert summary["libraries"]["sacrebleu"] != "not installed"


def test_chinese_bleu_uses_the_zh_tokenizer():
    summary, _ = score(_records([("我爱北京天安门", "我爱北京天安门")]), "bleu", language="zh")
    assert summary["score"] == pytest.approx(100.0)
    assert "tok:zh" in summary["signature"]


def test_japanese_bleu_says_which_tokenizer_it_used():
    summary, _ = score(_records([("猫がいる", "猫がいる")]), "bleu", language="ja")
    assert ("tok:ja-mecab" in summary["signature"]) != ("note" in summary)


def test_chrf_is_100_for_identical_text_and_0_for_disjoint_characters():
    same, _ = score(_records([("abc def", "abc def")]), "chrf")
    disjoint, _ = score(_records([("xyz", "abc")]), "chrf")
    assert same["score"] == pytest.approx(100.0)
    assert disjoint["score"] == pytest.approx(0.0)
    assert "chrF2" in same["signature"] or "nc:6" in same["signature"]


def test_multiple_choice_accuracy_counts_unparsed_answers_wrong_and_reports_them():
    choices = ["a dog", "a cat", "rain"]
    records = [
        {"text": "(B)", "choices": choices, "answer": "a cat"},  # right, by letter
        {"text": "The answer is A", "choices": choices, "answer": "a dog"},  # right, by letter
        {"text": "I hear rain falling", "choices": choices, "answer": "rain"},  # right, by text
        {"text": "A cat or a dog", "choices": choices, "answer": "a cat"},  # two texts: unparsed
        {"text": "no idea", "choices": choices, "answer": "rain"},  # unparsed
        {"text": "a dog barks", "choices": choices, "answer": "a cat"},  # parsed, wrong
        {"text": None, "error": "decode failed", "choices": choices, "answer": "rain"},  # failed
    ]
    for r in records:
        r["reference"] = r["answer"]
    summary, outcomes = score(records, "accuracy")
    assert summary["n"] == 7
    assert summary["n_correct"] == 3
    assert summary["score"] == pytest.approx(3 / 7)  # unparsed and failed stay in the denominator
    assert summary["n_unparsed"] == 2
    assert summary["n_failed"] == 1
    assert [o["extracted_by"] for o in outcomes] == [
        "letter",
        "letter",
        "text",
        "unparsed",
        "unparsed",
        "text",
        "failed",
    ]


def test_classification_labels_come_from_the_references_and_yes_no_from_the_preset():
    emotions = [
        ("The speaker sounds happy.", "happy"),
        ("sad", "sad"),
        ("Angry, maybe sad", "angry"),  # two labels: unparsed
    ]
    summary, _ = score(_records(emotions), "accuracy")
    assert summary["labels"] == ["angry", "happy", "sad"]
    assert (summary["n_correct"], summary["n_unparsed"]) == (2, 1)
    trials = [("Yes.", "yes"), ("No, two different people.", "no"), ("Yes", "no")]
    verification, _ = score(_records(trials), "accuracy", labels=["yes", "no"])
    assert verification["score"] == pytest.approx(2 / 3)


def test_an_answer_outside_the_choices_is_an_error():
    records = [{"text": "A", "choices": ["x", "y"], "answer": "z", "reference": "z"}]
    with pytest.raises(ConfigError, match="record 1"):
        score(records, "accuracy")


def test_records_without_reference_are_all_named():
    with pytest.raises(ConfigError, match=r"record 2.*\(and 1 more\)"):
        score([{"text": "a", "reference": "a"}, {"text": "b"}, {"text": "c"}], "wer")


@pytest.mark.slow  # Java: the PTB tokenizer and METEOR start a JVM each (seconds to a minute)
@pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")
def test_captions_with_java_score_exact_matches_above_unrelated_ones_and_skip_spice():
    refs = [
        ["a dog barks in the distance", "a dog is barking"],
        ["rain falls on a tin roof", "heavy rain on a roof"],
        ["a man speaks over traffic noise", "a man talks while cars pass"],
        ["birds chirp in the morning", "several birds are singing"],
    ]
    texts = [refs[0][0], refs[1][0], "music plays loudly", "an engine idles"]
    summary, outcomes = score(
        [{"text": t, "reference": r} for t, r in zip(texts, refs, strict=True)], "caption"
    )
    assert "PTBTokenizer" in summary["tokenizer"]
    for name in ("rouge_l", "cider_d", "meteor"):
        assert min(o[name] for o in outcomes[:2]) > max(o[name] for o in outcomes[2:]), name
    assert [o["rouge_l"] for o in outcomes[:2]] == pytest.approx([1.0, 1.0])
    assert summary["score"] == summary["scores"]["cider_d"]
    assert summary["scores"]["cider_d"] == pytest.approx(sum(o["cider_d"] for o in outcomes) / 4)
    assert "spice" in summary["not_computed"] and summary["not_computed"]["spice"]


def test_captions_without_java_fall_back_and_say_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    refs = [["a dog barks", "a dog is barking"], ["rain on a roof", "rain falls on the roof"]]
    records = [
        {"text": "A dog barks!", "reference": refs[0]},
        {"text": "music", "reference": refs[1]},
    ]
    summary, outcomes = score(records, "caption")
    assert "meteor" in summary["not_computed"] and "Java" in summary["not_computed"]["meteor"]
    assert "spice" in summary["not_computed"]
    assert "no Java" in summary["tokenizer"]
    assert outcomes[0]["rouge_l"] == pytest.approx(1.0)  # punctuation and case removed
    assert outcomes[1]["rouge_l"] == pytest.approx(0.0)
    assert outcomes[0]["cider_d"] > outcomes[1]["cider_d"]


def test_unknown_metric_and_normaliser_are_refused():
    with pytest.raises(ConfigError, match="unknown metric"):
        score(_records([("a", "a")]), "meteor")
    with pytest.raises(ConfigError, match="unknown normalizer"):
        score(_records([("a", "a")]), "wer", normalizer="fancy")
