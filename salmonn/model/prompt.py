"""The LLM prompt around the audio: the user's instruction, the chat template, the split at ``<SpeechHere>``.

Pure string work (no torch), shared by the model (which embeds the two halves around the audio) and
the job layer (which renders instructions from templates).
See docs/original-model.md, "Prompt and LLM".
"""

from __future__ import annotations

from ..constants import PROMPT_TEMPLATE, SPEECH_PLACEHOLDER, SPEECH_PREFIX
from ..errors import PromptError


def audio_instruction(text: str) -> str:
    """The audio instruction for a raw ``text``: ``text`` itself when it holds ``<SpeechHere>``
    (once), else ``"<Speech><SpeechHere></Speech> " + text``.

    Raises:
        PromptError: ``<SpeechHere>`` appears more than once.
    """
    count = text.count(SPEECH_PLACEHOLDER)
    if count > 1:
        raise PromptError(f"a prompt may contain {SPEECH_PLACEHOLDER} once, found {count} times")
    return text if count == 1 else SPEECH_PREFIX + text.strip()


def wrap_prompt(user_text: str) -> str:
    """The full LLM prompt (see docs/original-model.md, "Prompt and LLM").

    ``"Describe it."`` -> ``"USER: <Speech><SpeechHere></Speech> Describe it.\\nASSISTANT:"``. A
    text that already contains ``<SpeechHere>`` is used as is inside the template.
    """
    body = audio_instruction(user_text)
    return PROMPT_TEMPLATE.format(body)


def split_prompt(user_text: str) -> tuple[str, str]:
    """``(p_before, p_after)``: the wrapped prompt split at ``<SpeechHere>``; audio goes between."""
    before, after = wrap_prompt(user_text).split(SPEECH_PLACEHOLDER)
    return before, after


def text_prompt(user_text: str) -> str:
    """The prompt of a text-only turn (no audio): ``"USER: {text}\\nASSISTANT:"``."""
    return PROMPT_TEMPLATE.format(user_text.strip())
