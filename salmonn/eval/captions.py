"""Caption metrics with pycocoevalcap: BLEU-1..4, ROUGE-L, CIDEr-D, and METEOR / SPICE when possible.

pycocoevalcap is the COCO caption evaluation code that audio captioning (AudioCaps, Clotho, DCASE)
reports with. Its ``Cider`` is CIDEr-D (clipped n-gram counts, a Gaussian length penalty with
sigma 6, document frequencies from the references of the corpus scored). Text is tokenized by its PTB
tokenizer, a Java program; METEOR is a Java program too. Without Java both fall back: tokens are the
lower-cased words with punctuation removed (the summary names the tokenizer used) and METEOR is
reported as not computed. SPICE needs Stanford CoreNLP, which pycocoevalcap downloads on first use;
where that jar is absent (always, offline) SPICE is reported as not computed, with the reason.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ..errors import ConfigError

_CORENLP_JAR = "stanford-corenlp-3.6.0.jar"


def caption_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """The caption metrics of ``hyps`` against their reference lists.

    Returns:
        ``score`` (CIDEr-D), ``scores`` (every metric computed, as pycocoevalcap gives it: 0-1 for
        BLEU, ROUGE-L and METEOR, CIDEr-D on its 0-10 scale), ``not_computed`` (metric -> reason),
        ``per_item`` (metric -> one value per caption, ROUGE-L, CIDEr-D and METEOR), ``tokenizer``
        and ``libraries``.
    """
    try:
        import pycocoevalcap
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise ConfigError(
            "caption metrics need pycocoevalcap: pip install 'salmonn[eval]'"
        ) from None
    if any(not r for r in refs):
        raise ConfigError("every caption record needs at least one reference")
    java = shutil.which("java") is not None
    gts = {i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)}
    res = {i: [{"caption": h}] for i, h in enumerate(hyps)}
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = "pycocoevalcap PTBTokenizer (Stanford CoreNLP 3.4.1)"
        gts_t, res_t = PTBTokenizer().tokenize(gts), PTBTokenizer().tokenize(res)
    else:
        tokenizer = "lower-cased words, punctuation removed (no Java for the PTB tokenizer)"
        gts_t = {i: [_simple(c["caption"]) for c in cs] for i, cs in gts.items()}
        res_t = {i: [_simple(c["caption"]) for c in cs] for i, cs in res.items()}
    res_t = {i: [c if c.strip() else "<empty>" for c in cs] for i, cs in res_t.items()}
    scores: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    not_computed: dict[str, str] = {}
    bleu, _ = Bleu(4).compute_score(gts_t, res_t, verbose=0)
    scores.update({f"bleu_{n}": float(b) for n, b in enumerate(bleu, 1)})
    scorers: list[tuple[str, Any]] = [("rouge_l", Rouge()), ("cider_d", Cider())]
    if java:
        from pycocoevalcap.meteor.meteor import Meteor

        scorers.append(("meteor", Meteor()))
    for name, scorer in scorers:
        total, items = scorer.compute_score(gts_t, res_t)
        scores[name] = float(total)
        per_item[name] = [float(v) for v in items]
    else:
        not_computed["meteor"] = "needs Java (METEOR 1.5 is a Java program)"
    spice_lib = Path(list(pycocoevalcap.__path__)[0]) / "spice" / "lib" / _CORENLP_JAR
    if not java:
        not_computed["spice"] = "needs Java"
    elif not spice_lib.is_file():
        not_computed["spice"] = (
            f"needs Stanford CoreNLP ({_CORENLP_JAR}), which pycocoevalcap downloads on first use; "
            "not present here, so SPICE (and SPIDEr) is not computed offline"
        )
    else:
        from pycocoevalcap.spice.spice import Spice

        scores["spice"] = float(Spice().compute_score(gts_t, res_t)[0])
        scores["spider"] = (scores["spice"] + scores["cider_d"]) / 2
    return {
        "score": scores["cider_d"],
        "scores": scores,
        "per_item": per_item,
        "not_computed": not_computed,
        "tokenizer": tokenizer,
        "libraries": {"pycocoevalcap": version("pycocoevalcap")},
    }


def _simple(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
