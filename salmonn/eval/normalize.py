"""Text normalisers applied to hypothesis and reference before a metric, named in every summary.

``whisper-en`` is OpenAI Whisper's English normaliser (spelling, numbers, contractions, punctuation)
as the ``whisper-normalizer`` package ships it; ``basic`` is Whisper's language-independent one
(lower case, symbols and bracketed text removed, spaces collapsed), used for non-English text and for
matching labels; ``none`` passes text through. :func:`get_normalizer` returns the function and a
description (name and package version) that goes into the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError

NORMALIZERS = ("whisper-en", "basic", "none")


@dataclass(frozen=True)
class Normalizer:
    """A named text normaliser.

    Attributes:
        name: one of :data:`NORMALIZERS`.
        version: ``"whisper-normalizer X.Y.Z"`` for the Whisper ones, ``""`` for ``none``.
        apply: the function (text -> normalised text).
    """

    name: str
    version: str
    apply: Callable[[str], str]

    def __call__(self, text: str) -> str:
        return self.apply(text)

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


def get_normalizer(name: str) -> Normalizer:
    """The normaliser called ``name``.

    Raises:
        ConfigError: an unknown name, or ``whisper-normalizer`` not installed (the ``[eval]`` extra).
    """
    if name == "none":
        return Normalizer("none", "", lambda text: text)
    if name not in NORMALIZERS:
        raise ConfigError(f"unknown normalizer {name!r}; choose from {', '.join(NORMALIZERS)}")
    try:
        from importlib.metadata import version

        if name == "whisper-en":
            from whisper_normalizer.english import EnglishTextNormalizer as Chosen
        else:
            from whisper_normalizer.basic import BasicTextNormalizer as Chosen
    except ImportError:
        raise ConfigError(
            f"normalizer {name!r} needs whisper-normalizer: pip install 'salmonn[eval]'"
        ) from None
    function = Chosen()
    return Normalizer(name, f"whisper-normalizer {version('whisper-normalizer')}", function)


def default_normalizer(metric: str, language: str = "en") -> str:
    """The normaliser a metric uses unless told otherwise.

    WER on English: ``whisper-en``; WER/CER on other languages and accuracy (label matching):
    ``basic``; BLEU, chrF and captions: ``none`` (their own tokenizers handle case and punctuation
    as their published definitions say).
    """
    if metric == "wer" and language == "en":
        return "whisper-en"
    if metric in ("wer", "cer", "accuracy"):
        return "basic"
    return "none"
