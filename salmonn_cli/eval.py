"""``salmonn eval``: run the model over a benchmark manifest and score it (``run``), score saved
predictions without a model (``score``), and list the paper's evaluation presets (``tasks``).

``eval run`` plans the manifest as task groups (:mod:`salmonn.eval.run`) and runs each group as a
:class:`~salmonn_cli.run.Job` through the task commands' executors: the local one (the model loaded
once for all groups) or Ray's with ``--ray``. Predictions are appended to ``DIR/predictions.jsonl``
as they arrive (so ``--resume`` continues a killed run), then scored, rewritten with their outcomes,
summarised in ``DIR/summary.json`` and written back into the manifest's own format.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from salmonn.errors import ConfigError
from salmonn.eval.manifests import FORMATS
from salmonn.eval.normalize import NORMALIZERS

from .options import DECODING_OPTIONS, INPUT_OPTIONS, MODEL_OPTIONS, apply
from .ray_executor import RAY_OPTIONS

SCORE_METRICS = ("wer", "cer", "bleu", "chrf", "accuracy", "caption")
_CHUNKING = ("max_seconds", "strategy", "overlap_seconds", "channel")
_TASK_METRIC = {  # the metric of a task or template when neither --metric nor --preset says
    "transcribe": "wer",
    "translate": "bleu",
    "caption": "caption",
    "eval.asr": "wer",
    "eval.asr_de": "wer",
    "eval.asr_zh": "cer",
    "eval.translation_ec": "bleu",
    "eval.translation_en2de": "bleu",
    "eval.translation_en2ja": "bleu",
    "eval.audiocaption": "caption",
    "eval.audiocaption_v2": "caption",
    "eval.music_description": "caption",
    "eval.emotion_recognition": "accuracy",
    "eval.speaker_verification": "accuracy",
}


def _chunking_options() -> list[Any]:
    """The chunking flags of the task commands (``--chunk-seconds`` ...), without the input ones."""

    def probe() -> None: ...

    apply(INPUT_OPTIONS)(probe)
    wanted = [p for p in probe.__click_params__ if p.name in _CHUNKING]  # type: ignore[attr-defined]

    def attach(func: Any) -> Any:
        func.__dict__.setdefault("__click_params__", []).extend(wanted)
        return func

    return [attach]


JUDGE_OPTIONS = [
    click.option(
        "--judge-url",
        metavar="URL",
        help="OpenAI-compatible endpoint (…/v1) of a judge model for open answers. [default: off]",
    ),
    click.option(
        "--judge-model", metavar="NAME", help="The judge model's name (with --judge-url)."
    ),
]
SCORING_OPTIONS = [
    click.option(
        "--normalizer",
        type=click.Choice(NORMALIZERS),
        help="Text normaliser before the metric. [default: whisper-en for English WER, basic for "
        "other WER/CER and accuracy, none for BLEU, chrF and captions]",
    ),
    click.option(
        "--language",
        metavar="L",
        help="Language of the answers: en, zh, ja, de ... (tokenizer, normaliser). [default: the "
        "preset's, else en]",
    ),
]


@click.group("eval")
def eval_group() -> None:
    """Score answers against references (WER, CER, BLEU, chrF, accuracy, captions).

    eval run: the model over a manifest, then scores. eval score: saved predictions, no model.
    eval tasks: the paper's evaluation tasks as presets, with its numbers.
    """


@eval_group.command("run")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out_dir", required=True, metavar="DIR", help="Output folder.")
@click.option("--preset", metavar="NAME", help="A row of `salmonn eval tasks`.")
@click.option(
    "--task",
    "default_task",
    metavar="TASK|TEMPLATE",
    help="Task of items that name none: one of the six tasks or a template. [default: the "
    "preset's; ask for multiple choice; else transcribe]",
)
@click.option(
    "--manifest-format",
    type=click.Choice(("auto", *FORMATS)),
    default="auto",
    show_default=True,
    help="Manifest format (auto: from the extension and the first entry).",
)
@click.option("--metric", type=click.Choice((*SCORE_METRICS, "judge")), help="The metric.")
@apply(SCORING_OPTIONS + JUDGE_OPTIONS)
@click.option("--limit", type=int, metavar="N", help="Only the first N items (a quick check).")
@click.option("--resume", is_flag=True, help="Keep DIR's predictions made with these settings.")
@apply(MODEL_OPTIONS + DECODING_OPTIONS + _chunking_options())
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or notes on stderr.")
@click.option("-v", "--verbose", count=True, help="Log to stderr (-v info, -vv debug).")
@apply(RAY_OPTIONS)
def eval_run(**params: Any) -> None:
    """Run the model over MANIFEST, then score: DIR/predictions.jsonl, DIR/summary.json, the
    manifest written back with the answers, a table on stderr.

    MANIFEST: our JSONL, NeMo JSONL, the original SALMONN annotation JSON, MMAU JSON or AIR-Bench
    Foundation JSON. Every bad entry is reported before the model loads.
    """
    from .eval_run import run_eval

    run_eval(params)


@eval_group.command("score")
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.option(
    "--metric",
    type=click.Choice(SCORE_METRICS),
    help="The metric. [default: accuracy when records have choices, else from their task]",
)
@apply(SCORING_OPTIONS)
@click.option(
    "--label", "labels", multiple=True, metavar="L", help="A class for accuracy (repeatable)."
)
@apply(JUDGE_OPTIONS)
@click.option("-o", "--output", metavar="SUMMARY", help="Also write the summary to this file.")
def eval_score(
    predictions: str,
    metric: str | None,
    normalizer: str | None,
    language: str | None,
    labels: tuple[str, ...],
    judge_url: str | None,
    judge_model: str | None,
    output: str | None,
) -> None:
    """Score saved records: hypothesis `text`, reference `reference` (text or list); multiple
    choice adds `choices` and `answer`. Prints one JSON object on stdout.

    PREDICTIONS: a JSONL file of records (eval run's predictions.jsonl, a task command's -o FILE
    with a `reference` added, the server's or --ray's records).
    """
    from salmonn.eval.metrics import check_records, score
    from salmonn.eval.run import read_numbered

    path = Path(predictions)
    if not path.is_file():
        raise click.BadParameter(f"{path}: no such file", param_hint="PREDICTIONS")
    numbered = _read_or_fail(path, read_numbered)
    records = [record for _, record in numbered]
    if not records:
        raise click.UsageError(f"{path}: no records")
    lines = [n for n, _ in numbered]
    _read_or_fail(path, lambda p: check_records(records, where=f"{p}: ", numbers=lines))
    chosen = metric or infer_metric(records)
    summary, _ = score(
        records, chosen, normalizer=normalizer, language=language or "en", labels=labels or None
    )
    if judge_url:
        summary["judge"] = judge_summary(records, judge_url, judge_model)
    summary["predictions"] = str(path)
    text = json.dumps(summary, ensure_ascii=False, indent=2)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n", encoding="utf-8")
    click.echo(text)


@eval_group.command("tasks")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def eval_tasks(as_json: bool) -> None:
    """The paper's evaluation tasks: preset, template, metric, normaliser, the paper's number."""
    from salmonn.eval.normalize import default_normalizer
    from salmonn.eval.presets import EVAL_PRESETS

    rows = [
        {
            "preset": p.name,
            "task": p.task,
            "template": p.template,
            "metric": p.metric,
            "normalizer": p.normalizer or default_normalizer(p.metric, p.language),
            "language": p.language,
            "paper": p.paper,
            "note": p.note,
        }
        for p in EVAL_PRESETS.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for row in rows:
        paper = ", ".join(f"{k} {_number(v)}" for k, v in row["paper"].items())
        click.echo(
            f"{row['preset']:<22} {row['metric']:<9} {row['normalizer']:<11} "
            f"{row['template']:<28} paper: {paper:<26} {row['task']}"
        )


def infer_metric(records: list[dict[str, Any]], default_task: str | None = None) -> str:
    """The metric for records that did not name one: accuracy for multiple choice, else the metric
    of their task (:data:`_TASK_METRIC`)."""
    if any(r.get("choices") for r in records):
        return "accuracy"
    tasks = {str(r.get("task")) for r in records} | ({default_task} if default_task else set())
    metrics = {_TASK_METRIC[t] for t in tasks if t in _TASK_METRIC}
    if len(metrics) == 1:
        return metrics.pop()
    raise click.UsageError(
        f"cannot tell the metric of task(s) {', '.join(sorted(tasks))}: give --metric "
        f"({', '.join(SCORE_METRICS)})"
    )


def judge_summary(records: list[dict[str, Any]], url: str, model: str | None) -> dict[str, Any]:
    from salmonn.eval.judge import JudgeSettings, judge_records

    if not model:
        raise click.UsageError("--judge-url needs --judge-model NAME")
    summary, _ = judge_records(records, JudgeSettings(url, model))
    return summary


def _read_or_fail(path: Path, reader: Any) -> Any:
    """``reader(path)``; a :class:`ManifestError` prints every problem, then exits 2."""
    from salmonn.eval.manifests import ManifestError

    try:
        return reader(path)
    except ManifestError as err:
        for problem in err.problems:
            click.echo(f"error: {problem}", err=True)
        s = "y" if len(err.problems) == 1 else "ies"
        raise click.UsageError(f"{len(err.problems)} bad entr{s} in {path}") from None
    except ConfigError as err:
        raise click.UsageError(str(err)) from None


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def echo_table(rows: list[tuple[str, ...]]) -> None:
    """Aligned columns on stderr."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo(line.rstrip(), err=True)
    sys.stderr.flush()
