"""Scores over prediction records: WER, CER, BLEU, chrF, accuracy and caption metrics.

Every metric is computed by a maintained library in one corpus-level call, after a named normaliser
(:mod:`.normalize`): WER and CER with jiwer (edits summed over the corpus, divided by the summed
reference length, not a mean of per-item rates); BLEU and chrF with sacrebleu (``zh`` tokenizer for
Chinese, ``ja-mecab`` for Japanese when ``sacrebleu[ja]`` is installed, else ``13a``; the signature
goes into the summary); accuracy with the extractor of :mod:`.answers`; captions with
pycocoevalcap (:mod:`.captions`). A record that failed (``error`` set) is scored as an empty answer:
it counts against the model (all deletions, wrong, ...) and is counted in ``n_failed``; an answer the
extractor cannot read counts as wrong and is counted in ``n_unparsed``.

:func:`score` returns the summary (one JSON object: ``metric``, ``score``, ``n``, ``n_unparsed``,
``n_failed``, what was used) and one outcome per record (normalised texts, errors, extracted answer,
correct or not).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..errors import ConfigError
from .normalize import Normalizer, default_normalizer, get_normalizer

METRICS = ("wer", "cer", "bleu", "chrf", "accuracy", "caption")
NO_SPACE_LANGUAGES = ("zh", "ja")  # CER of these languages ignores spaces


_NEEDS = {
    "wer": ("jiwer",),
    "cer": ("jiwer",),
    "bleu": ("sacrebleu",),
    "chrf": ("sacrebleu",),
    "accuracy": (),
    "caption": ("pycocoevalcap",),
}


def require(metric: str, normalizer: str | None = None, language: str = "en") -> None:
    """Check, without scoring, that ``metric`` and its normaliser can run here (before a long run).

    Raises:
        ConfigError: an unknown metric or normaliser, or a library of the ``[eval]`` extra missing.
    """
    import importlib.util

    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    get_normalizer(normalizer or default_normalizer(metric, language))
    for module in _NEEDS[metric]:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"metric {metric} needs {module}: pip install 'salmonn[eval]'")


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``names`` (``"not installed"`` when absent)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def references_of(record: dict[str, Any]) -> list[str]:
    """A record's references as a list (``reference`` may be a text or a list of texts)."""
    reference = record.get("reference")
    if isinstance(reference, list):
        return [str(r) for r in reference]
    return [] if reference is None else [str(reference)]


def check_records(
    records: Sequence[dict[str, Any]], where: str = "", numbers: Sequence[int] | None = None
) -> None:
    """Raise :class:`~.manifests.ManifestError` naming every record without a usable ``reference`` (by its line
    number when ``numbers`` gives them, else as ``record N``)."""
    names = (
        [f"line {n}" for n in numbers]
        if numbers
        else [f"record {i + 1}" for i in range(len(records))]
    )
    bad = [
        f"{where}{name}: no 'reference' to score against"
        for name, r in zip(names, records, strict=True)
        if not references_of(r) and not (r.get("choices") and r.get("answer") is not None)
    ]
    if bad:
        from .manifests import ManifestError

        raise ManifestError(bad)


def score(
    records: Sequence[dict[str, Any]],
    metric: str,
    *,
    normalizer: str | None = None,
    language: str = "en",
    labels: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``records`` (dicts with ``text``, ``reference``, ``error``; multiple choice adds
    ``choices`` and ``answer``).

    Args:
        metric: one of :data:`METRICS`.
        normalizer: a name of :data:`~.normalize.NORMALIZERS`; default: :func:`default_normalizer`.
        language: the language of the answers (tokenizer, CER spaces, default normaliser).
        labels: the classes for accuracy without choices (default: the distinct references).

    Returns:
        The summary and one outcome per record, in order.

    Raises:
        ConfigError: an unknown metric or normaliser, a missing library, records without reference.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    check_records(records)
    norm = get_normalizer(normalizer or default_normalizer(metric, language))
    hyps = [_hypothesis(r) for r in records]
    summary: dict[str, Any] = {
        "metric": metric,
        "score": None,
        "n": len(records),
        "n_unparsed": 0,
        "n_failed": sum(r.get("error") is not None for r in records),
        "normalizer": norm.describe(),
        "language": language,
    }
    if metric in ("wer", "cer"):
        extra, outcomes = _error_rate(records, hyps, metric, norm, language)
    elif metric in ("bleu", "chrf"):
        extra, outcomes = _sacrebleu(records, hyps, metric, norm, language)
    elif metric == "accuracy":
        extra, outcomes = _accuracy(records, hyps, norm, labels)
    else:
        from .captions import caption_scores

        refs = [[norm(r) for r in references_of(rec)] for rec in records]
        extra = caption_scores([norm(h) for h in hyps], refs)
        per_item = extra.pop("per_item")
        outcomes = [
            {
                "normalized_text": norm(h),
                "normalized_reference": r,
                **{name: values[i] for name, values in per_item.items()},
            }
            for i, (h, r) in enumerate(zip(hyps, refs, strict=True))
        ]
    summary.update(extra)
    return summary, outcomes


def _hypothesis(record: dict[str, Any]) -> str:
    text = record.get("text")
    return "" if record.get("error") is not None or text is None else str(text)


def _error_rate(
    records: Sequence[dict[str, Any]],
    hyps: list[str],
    metric: str,
    norm: Normalizer,
    language: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    jiwer = _need("jiwer")
    squash = metric == "cer" and language in NO_SPACE_LANGUAGES

    def prepare(text: str) -> str:
        text = norm(text)
        return "".join(text.split()) if squash else " ".join(text.split())

    refs = [prepare(references_of(r)[0]) for r in records]
    hyp_n = [prepare(h) for h in hyps]
    measure = jiwer.process_words if metric == "wer" else jiwer.process_characters
    scored = [i for i, ref in enumerate(refs) if ref]  # jiwer refuses empty references
    outcomes: list[dict[str, Any]] = []
    for ref, hyp in zip(refs, hyp_n, strict=True):
        outcome: dict[str, Any] = {"normalized_text": hyp, "normalized_reference": ref}
        if ref:
            one = measure([ref], [hyp])
            outcome["errors"] = one.substitutions + one.deletions + one.insertions
            outcome["reference_length"] = one.hits + one.substitutions + one.deletions
        else:
            outcome["errors"] = None
            outcome["skipped"] = "empty reference after normalisation"
        outcomes.append(outcome)
    extra: dict[str, Any] = {
        "n_skipped": len(records) - len(scored),
        "libraries": library_versions("jiwer", "whisper-normalizer"),
    }
    if scored:
        total = measure([refs[i] for i in scored], [hyp_n[i] for i in scored])
        extra["score"] = total.wer if metric == "wer" else total.cer
        extra["counts"] = {
            "substitutions": total.substitutions,
            "deletions": total.deletions,
            "insertions": total.insertions,
            "hits": total.hits,
            "reference_length": total.hits + total.substitutions + total.deletions,
        }
    extra["unit"] = "words" if metric == "wer" else "characters"
    return extra, outcomes


def sacrebleu_tokenizer(language: str) -> tuple[str, str | None]:
    """The sacrebleu tokenizer for ``language`` and a note when the preferred one is missing."""
    if language == "zh":
        return "zh", None
    if language == "ja":
        try:
            from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

            TokenizerJaMecab()
            return "ja-mecab", None
        except Exception:  # noqa: BLE001 - MeCab and its dictionary are optional
            return "13a", "ja-mecab is not installed (pip install 'sacrebleu[ja]'); used 13a"
    return "13a", None


def _sacrebleu(
    records: Sequence[dict[str, Any]],
    hyps: list[str],
    metric: str,
    norm: Normalizer,
    language: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    _need("sacrebleu")
    from sacrebleu.metrics import BLEU, CHRF

    refs = [[norm(r) for r in references_of(rec)] for rec in records]
    hyp_n = [norm(h) for h in hyps]
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    extra: dict[str, Any] = {"libraries": library_versions("sacrebleu", "whisper-normalizer")}
    if metric == "bleu":
        tokenizer, note = sacrebleu_tokenizer(language)
        scorer: Any = BLEU(tokenize=tokenizer)
        if note:
            extra["note"] = note
        sentence_scorer: Any = BLEU(tokenize=tokenizer, effective_order=True)
    else:
        scorer, sentence_scorer = CHRF(), CHRF()
    result = scorer.corpus_score(hyp_n, streams)
    extra["score"] = result.score
    extra["signature"] = scorer.get_signature().format()
    if metric == "bleu":
        extra["counts"] = {"precisions": result.precisions, "bp": result.bp}
    outcomes = [
        {
            "normalized_text": h,
            "normalized_reference": r,
            "sentence_score": sentence_scorer.sentence_score(h, r).score,
        }
        for h, r in zip(hyp_n, refs, strict=True)
    ]
    return extra, outcomes


def _accuracy(
    records: Sequence[dict[str, Any]],
    hyps: list[str],
    norm: Normalizer,
    labels: Sequence[str] | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from .answers import extract_choice, gold_index

    def clean(text: str) -> str:
        return " ".join(norm(text).split())

    classes = sorted({clean(r) for rec in records for r in references_of(rec)[:1]})
    if labels is not None:
        classes = [clean(label) for label in labels]
    outcomes, correct, unparsed, bad = [], 0, 0, []
    for i, (record, hyp) in enumerate(zip(records, hyps, strict=True), 1):
        choices = record.get("choices")
        if choices:
            gold = gold_index(str(record.get("answer") or references_of(record)[0]), choices, norm)
            if gold is None:
                bad.append(f"record {i}: the answer is not one of its choices")
                continue
            found = extract_choice(hyp, choices, letters=True, normalize=norm)
            right = found.index == gold
        else:
            target = clean(references_of(record)[0])
            found = extract_choice(hyp, classes, letters=False, normalize=norm)
            right = found.parsed and clean(found.option or "") == target
        failed = record.get("error") is not None
        unparsed += not found.parsed and not failed
        correct += bool(right)
        outcomes.append(
            {
                "normalized_text": clean(hyp),
                "extracted": found.option,
                "extracted_by": "failed" if failed else found.how,
                "correct": bool(right),
            }
        )
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConfigError(bad[0] + more)
    extra = {
        "score": correct / len(records) if records else None,
        "n_correct": correct,
        "n_unparsed": unparsed,
        "labels": None if any(r.get("choices") for r in records) else classes,
        "extractor": "choice letter, else exactly one option's text (unparsed = wrong)",
        "libraries": library_versions("whisper-normalizer"),
    }
    return extra, outcomes


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this metric needs {module}: pip install 'salmonn[eval]'") from None
