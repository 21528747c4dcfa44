"""The flow of ``salmonn eval run``: manifest -> plan -> settings -> resume -> run each task group
through the task commands' executor -> score -> predictions, summary, written-back manifest, table.

Everything that can be checked without torch (the manifest's entries, each item's task and prompt,
the flags, the output folder) is checked before the model loads; every bad entry is listed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from salmonn.errors import ConfigError, PromptError

from .eval import _read_or_fail, echo_table, infer_metric, judge_summary
from .progress import Reporter, setup_logging
from .ray_executor import ray_executor
from .run import Job, LocalExecutor
from .settings import SettingsError, TaskSettings

_NO_INPUT_FLAGS = {
    "paths": (),
    "recursive": True,
    "include_hidden": False,
    "extensions": (),
    "list_file": None,
    "shard": None,
    "output": None,
    "fmt": "jsonl",
    "fail_fast": False,
}


def run_eval(params: dict[str, Any]) -> None:
    """Run ``salmonn eval run``; exits 0, 1 (an item failed) or 2 (usage)."""
    from salmonn.eval import run as plan_run
    from salmonn.eval.manifests import read_manifest
    from salmonn.eval.presets import get_preset

    setup_logging(params["verbose"])
    reporter = Reporter(quiet=params["quiet"])
    manifest_path = Path(params.pop("manifest"))
    out_dir = Path(params.pop("out_dir"))
    try:
        preset = get_preset(params["preset"]) if params["preset"] else None
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--preset") from None
    manifest = _read_or_fail(manifest_path, lambda p: read_manifest(p, params["manifest_format"]))
    items = manifest.items[: params["limit"]] if params["limit"] else manifest.items
    multiple_choice = any(i.choices for i in items)
    default_task = params["default_task"] or (
        preset.template if preset else ("ask" if multiple_choice else "transcribe")
    )
    language = params["language"] or (preset.language if preset else "en")
    metric = params["metric"] or (preset.metric if preset else None)
    if metric is None:
        tasks = [{"task": i.task or default_task, "choices": i.choices} for i in items]
        metric = infer_metric(tasks)
    judge = (params["judge_url"], params["judge_model"])
    if metric == "judge" and not judge[0]:
        raise click.UsageError(
            "metric judge (open answers) needs --judge-url URL --judge-model NAME"
        )
    if judge[0] and not judge[1]:
        raise click.UsageError("--judge-url needs --judge-model NAME")
    if metric != "judge":
        from salmonn.eval.metrics import require

        normalizer = params["normalizer"] or (preset.normalizer if preset else None)
        try:
            require(metric, normalizer, language)
        except ConfigError as err:
            raise click.UsageError(str(err)) from None
    groups = _read_or_fail(
        manifest_path, lambda p: plan_run.plan(items, default_task, language=language, where=str(p))
    )
    executor = ray_executor(params)
    try:
        settings = TaskSettings.from_params({**_NO_INPUT_FLAGS, **params}, warn=reporter.warn)
        plan_run.check_output_dir(out_dir, params["resume"])
    except (SettingsError, ConfigError, PromptError) as err:
        raise click.UsageError(str(err)) from None
    predictions_path = out_dir / plan_run.PREDICTIONS
    previous = plan_run.latest_by_id(
        _read_or_fail(predictions_path, plan_run.read_predictions) if params["resume"] else []
    )
    from .paths import weights_of

    done = plan_run.done_ids(
        previous,
        groups,
        generation=settings.generation,
        chunking=settings.chunking,
        same_model=lambda model: settings.model.made(weights_of(model)),
    )
    if done:
        reporter.info(f"resume: {len(done)} of {len(items)} items already done")
    failed = _run_groups(
        groups, done, settings, executor or LocalExecutor(), predictions_path, reporter
    )
    latest = plan_run.latest_by_id(plan_run.read_predictions(predictions_path))
    records = [latest[i.id] for i in items if i.id in latest]
    summary, scored = _score(records, metric, params, language, preset, judge)
    plan_run.write_jsonl(predictions_path, scored)
    summary.update(
        {
            "manifest": str(manifest_path),
            "manifest_format": manifest.fmt,
            "preset": preset.name if preset else None,
            "task": default_task,
            "n_items": len(items),
            "model": records[0].get("model") if records else None,
            "options": records[0].get("options") if records else None,
        }
    )
    if preset:
        summary["paper"] = plan_run.compare_with_paper(summary, preset.paper)
    (out_dir / plan_run.SUMMARY).write_text(
        json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    from salmonn.eval.manifests import write_back

    answers = {r["id"]: r.get("text") for r in records if r.get("error") is None}
    written = write_back(manifest, answers, out_dir / manifest_path.name)
    _table(summary, preset, out_dir, written)
    if failed or summary["n_failed"]:
        sys.exit(1)


def _score(
    records: list[dict[str, Any]],
    metric: str,
    params: dict[str, Any],
    language: str,
    preset: Any,
    judge: tuple[str | None, str | None],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary and the predictions with their outcomes."""
    from salmonn.eval import run as plan_run
    from salmonn.eval.metrics import score

    if metric == "judge":
        from salmonn.eval.judge import JudgeSettings, judge_records

        summary, outcomes = judge_records(records, JudgeSettings(judge[0] or "", judge[1] or ""))
        outcomes = [{"normalized_text": None, "normalized_reference": None, **o} for o in outcomes]
    else:
        labels = preset.labels if preset and preset.metric == metric else None
        normalizer = params["normalizer"] or (preset.normalizer if preset else None)
        summary, outcomes = score(
            records, metric, normalizer=normalizer, language=language, labels=labels
        )
        if judge[0]:
            summary["judge"] = judge_summary(records, judge[0], judge[1])
    return summary, plan_run.attach_outcomes(records, outcomes)


def _run_groups(
    groups: list[Any],
    done: set[str],
    settings: TaskSettings,
    executor: Any,
    predictions_path: Path,
    reporter: Reporter,
) -> int:
    """Run every group's items not done; append each prediction as it arrives. Returns the failures."""
    from salmonn.eval.run import prediction

    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(predictions_path)
    failed = 0
    with reporter, open(predictions_path, "a", encoding="utf-8") as stream:
        for group in groups:
            todo = [
                (i, inp)
                for i, inp in zip(group.items, group.inputs, strict=True)
                if i.id not in done
            ]
            if not todo:
                continue
            job = Job(
                items=[inp for _, inp in todo],
                spec=group.spec,
                model=settings.model,
                generation=settings.generation,
                chunking=settings.chunking,
                batch_size=settings.batch_size,
                verbose=settings.output.verbose,
                quiet=settings.output.quiet,
            )
            reporter.expect([inp.path for _, inp in todo])
            records = executor(job, reporter)
            try:
                reporter.status("running")
                for (item, _), record in zip(todo, records, strict=False):
                    stream.write(json.dumps(prediction(record, item), ensure_ascii=False) + "\n")
                    stream.flush()
                    if record.error is not None:
                        failed += 1
                        reporter.error(f"{item.id} ({record.path}): {record.error}")
            finally:
                close = getattr(records, "close", None)
                if close is not None:
                    close()
    return failed


def _repair_tail(path: Path) -> None:
    from .paths import repair_jsonl_tail

    if path.is_file():
        repair_jsonl_tail(path)


def _table(summary: dict[str, Any], preset: Any, out_dir: Path, written: Path) -> None:
    rows = [("metric", "measured", "paper", "n", "unparsed", "failed")]
    paper = {row["score"]: row["paper"] for row in summary.get("paper") or []}
    scores = summary.get("scores") or {summary["metric"]: summary.get("score")}
    for name, value in scores.items():
        rows.append(
            (
                name,
                _fmt(value),
                _fmt(paper.get(name)),
                str(summary["n"]),
                str(summary["n_unparsed"]),
                str(summary["n_failed"]),
            )
        )
    for name in paper.keys() - scores.keys():
        reason = (summary.get("not_computed") or {}).get(name, "")
        rows.append((name, "not computed", _fmt(paper[name]), "", "", reason[:40]))
    echo_table(rows)
    click.echo(
        f"predictions: {out_dir / 'predictions.jsonl'}; summary: {out_dir / 'summary.json'}; "
        f"manifest with answers: {written}",
        err=True,
    )


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"
