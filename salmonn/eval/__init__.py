"""Evaluation: read benchmark manifests, run the model over them, score the answers.

The sub-package sits above the job layer: :mod:`.run` drives the model only through the public task
engine (``salmonn.make_task`` / ``salmonn.process``), the way the task commands do. Scoring
(:mod:`.metrics`, :mod:`.captions`, :mod:`.answers`, :mod:`.normalize`) needs no model, so a scorer
can be re-run over saved predictions. Metric libraries (jiwer, sacrebleu, whisper-normalizer,
pycocoevalcap: the ``[eval]`` extra) are imported only when a score is computed.
"""

from __future__ import annotations
