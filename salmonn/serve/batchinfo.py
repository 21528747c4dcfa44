"""What one model call of the server's worker did: the record that the batchers report and the metrics count.

Below both the worker (:mod:`salmonn.serve.batcher`) and its continuous-batching streams
(:mod:`salmonn.serve.streams`), so that neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchInfo:
    """What one model call did (for metrics): kind, items, requests merged, tokens, seconds.

    With continuous batching a "call" is one prefill: the items that joined the running decode
    together (``kind`` ``"mixed"`` when clips and text prompts joined at once); ``running`` is the
    number of items decoding in the step (0 for a plain ``generate`` call).
    """

    kind: str
    items: int
    requests: int
    tokens: int
    seconds: float
    audio_seconds: float
    running: int = 0
