"""An optional LLM judge for open answers, through any OpenAI-compatible chat endpoint.

In the style of AIR-Bench's chat evaluation: the judge model sees the question, the reference answer
and the model's answer, and gives one rating from 1 to 10 on a line ``Rating: N``. The score is the
mean rating over all records; a record that failed, a judge call that failed and a reply without a
readable rating all count 0 and are counted (``n_failed``, ``n_judge_errors``, ``n_unparsed``). The
judge is off unless a URL is given; the summary names the URL, the model and the prompt version.
Requests go through the standard library (no SDK needed); the API key is read from an environment
variable, never written anywhere.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROMPT_VERSION = 1
SYSTEM = (
    "You are a strict grader of answers about audio recordings. You are given a question, a "
    "reference answer written by a person who heard the audio, and a candidate answer. Rate how "
    "well the candidate answers the question, judged against the reference: helpfulness, "
    "relevance, accuracy and detail. Reply with a short reason and then a last line "
    "'Rating: N' where N is an integer from 1 (useless) to 10 (as good as the reference)."
)
_RATING = re.compile(r"rating\s*[:=]?\s*\**\s*(10|[1-9])\b", re.I)


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is.

    Attributes:
        url: the endpoint's base URL (``.../v1``); ``/chat/completions`` is appended.
        model: the judge model's name.
        api_key_env: the environment variable holding the API key (may be unset for local servers).
        timeout: seconds per request.
    """

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "prompt_version": PROMPT_VERSION}


def judge_prompt(question: str | None, reference: str, answer: str) -> str:
    return (
        f"Question: {question or '(the question is spoken in the audio)'}\n"
        f"Reference answer: {reference}\n"
        f"Candidate answer: {answer}"
    )


def parse_rating(reply: str) -> int | None:
    """The rating of a judge reply (its last ``Rating: N``), or ``None``."""
    found = _RATING.findall(reply)
    return int(found[-1]) if found else None


def ask_judge(settings: JudgeSettings, prompt: str) -> str:
    """One chat completion; returns the reply text.

    Raises:
        OSError: the request failed (HTTP error, timeout, refused connection, bad reply).
    """
    body = json.dumps(
        {
            "model": settings.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": prompt},
            ],
        }
    ).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(settings.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = settings.url.rstrip("/") + "/chat/completions"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=settings.timeout) as response:  # noqa: S310
        data = json.loads(response.read().decode("utf-8"))
    try:
        return str(data["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError) as err:
        raise OSError(f"unexpected reply from {url}: no choices[0].message.content") from err


def judge_records(
    records: Sequence[dict[str, Any]], settings: JudgeSettings
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Rate every record; the summary and one outcome (``rating``, ``judge_error``) per record."""
    total, unparsed, errors = 0, 0, 0
    outcomes: list[dict[str, Any]] = []
    for record in records:
        reference = record.get("reference")
        reference = " / ".join(reference) if isinstance(reference, list) else str(reference or "")
        if record.get("error") is not None or record.get("text") is None:
            outcomes.append({"rating": 0, "judge_error": None})
            continue
        prompt = judge_prompt(record.get("question"), reference, str(record["text"]))
        try:
            reply = ask_judge(settings, prompt)
        except (OSError, urllib.error.URLError, json.JSONDecodeError) as err:
            errors += 1
            outcomes.append({"rating": 0, "judge_error": str(err)})
            continue
        rating = parse_rating(reply)
        if rating is None:
            unparsed += 1
        total += rating or 0
        outcomes.append({"rating": rating, "judge_error": None})
    summary = {
        "metric": "judge",
        "score": total / len(records) if records else None,
        "scale": "1-10 (0 for failed, unrated or unparsed)",
        "n": len(records),
        "n_unparsed": unparsed,
        "n_failed": sum(r.get("error") is not None for r in records),
        "n_judge_errors": errors,
        "judge": settings.describe(),
    }
    return summary, outcomes
