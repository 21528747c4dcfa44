"""The paper's evaluation tasks as presets: template, metric, normaliser, language and the reported number.

Each row of :data:`EVAL_PRESETS` is one line of the SALMONN paper's results table (13B model, after
activation tuning) that a user with the data and the weights can rerun with
``salmonn eval run MANIFEST --preset NAME``. The templates are the original's evaluation prompts
(``prompts/eval.json``, listed by ``salmonn prompts``). ``paper`` maps a score name of our summary
to the paper's number on our scale (fractions for WER and accuracy, 0-100 for BLEU, pycocoevalcap's
0-1 for METEOR); ``None`` where the row is listed for completeness without a number recorded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class EvalPreset:
    """One evaluation task.

    Attributes:
        name: the preset name (``--preset``).
        task: the paper's task name and data set, for tables.
        template: the prompt template (``eval.*``) every item gets unless it names its own task.
        metric: the metric (:data:`~.metrics.METRICS`, or ``"judge"`` for open answers).
        language: the language of the answers (normaliser, tokenizer).
        normalizer: the normaliser (``None``: the metric's default).
        labels: the classes of a classification task (``None``: the distinct references).
        paper: score name -> the paper's number, on the scale of our summary.
        note: how the row differs from the paper's set-up, if at all.
    """

    name: str
    task: str
    template: str
    metric: str
    language: str = "en"
    normalizer: str | None = None
    labels: tuple[str, ...] | None = None
    paper: dict[str, float | None] = field(default_factory=dict)
    note: str = ""


EVAL_PRESETS: dict[str, EvalPreset] = {
    p.name: p
    for p in (
        EvalPreset(
            "librispeech-clean",
            "ASR, LibriSpeech test-clean",
            "eval.asr",
            "wer",
            paper={"wer": 0.021},
        ),
        EvalPreset(
            "librispeech-other",
            "ASR, LibriSpeech test-other",
            "eval.asr",
            "wer",
            paper={"wer": 0.049},
        ),
        EvalPreset("gigaspeech", "ASR, GigaSpeech test", "eval.asr", "wer", paper={"wer": None}),
        EvalPreset(
            "covost2-en-zh",
            "En->Zh speech translation, CoVoST2",
            "eval.translation_ec",
            "bleu",
            language="zh",
            paper={"bleu": None},
        ),
        EvalPreset(
            "covost2-en-de",
            "En->De speech translation, CoVoST2 (untrained)",
            "eval.translation_en2de",
            "bleu",
            language="de",
            paper={"bleu": None},
        ),
        EvalPreset(
            "covost2-en-ja",
            "En->Ja speech translation, CoVoST2 (untrained)",
            "eval.translation_en2ja",
            "bleu",
            language="ja",
            paper={"bleu": None},
            note="ja-mecab tokenization needs pip install 'sacrebleu[ja]' (else 13a)",
        ),
        EvalPreset(
            "audiocaps",
            "Audio captioning, AudioCaps test",
            "eval.audiocaption",
            "caption",
            paper={"meteor": None, "spider": None},
            note="SPIDEr needs SPICE, not computed offline",
        ),
        EvalPreset(
            "musiccaps",
            "Music captioning, MusicCaps",
            "eval.music_description",
            "caption",
            paper={"meteor": None, "spider": None},
            note="SPIDEr needs SPICE, not computed offline",
        ),
        EvalPreset(
            "iemocap",
            "Emotion recognition, IEMOCAP",
            "eval.emotion_recognition",
            "accuracy",
            paper={"accuracy": None},
        ),
        EvalPreset(
            "voxceleb1",
            "Speaker verification, VoxCeleb1 (yes/no)",
            "eval.speaker_verification",
            "accuracy",
            labels=("yes", "no"),
            paper={"accuracy": None},
            note="each audio holds the two utterances of a trial; reference yes or no",
        ),
        EvalPreset(
            "librispeech-phone",
            "Phone recognition, LibriSpeech (PER)",
            "eval.phone_recognition",
            "wer",
            normalizer="none",
            paper={"wer": None},
            note="phones as words: the WER of the phone strings is the PER",
        ),
        EvalPreset(
            "librimix",
            "Overlapped speech recognition, LibriMix",
            "eval.speech_separation",
            "wer",
            paper={"wer": None},
        ),
        EvalPreset(
            "wikiqa",
            "Spoken-query question answering, WikiQA (untrained)",
            "eval.speech_query",
            "judge",
            paper={"judge": None},
            note="open answers: needs --judge-url (an OpenAI-compatible model)",
        ),
        EvalPreset(
            "mmau",
            "MMAU test-mini multiple choice",
            "ask",
            "accuracy",
            paper={"accuracy": None},
            note="not in the paper; SALMONN is a common MMAU baseline (its own numbers vary)",
        ),
        EvalPreset(
            "air-bench-foundation",
            "AIR-Bench Foundation multiple choice",
            "ask",
            "accuracy",
            paper={"accuracy": None},
            note="not in the paper; unparsed answers count as wrong (AIR-Bench's scorer drops them)",
        ),
    )
}


def get_preset(name: str) -> EvalPreset:
    """The preset called ``name``.

    Raises:
        ConfigError: an unknown name (the message lists the valid ones).
    """
    try:
        return EVAL_PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown eval preset {name!r}; choose from {', '.join(EVAL_PRESETS)}"
        ) from None
