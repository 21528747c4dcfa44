"""The ``salmonn`` command: six audio tasks, raw prompts and helpers.

Only click and the light parts of ``salmonn`` are imported here; torch and transformers load when a task
actually runs, so ``--help``, ``prompts`` and usage errors answer instantly.
"""

from __future__ import annotations

import glob
import os
import shlex
from typing import Any

import click

from salmonn import __version__
from salmonn.errors import PromptError, SalmonnError, error_line
from salmonn.jobs.tasks import TRANSCRIBE_LANGUAGES, make_task

from .options import PER_CHUNK_OPTION, common_options
from .ray_executor import ray_executor
from .run import run_task
from .sources import SettingsError

DEBUG_ENV = "SALMONN_DEBUG"


class SalmonnGroup(click.Group):
    """A group that turns :class:`SalmonnError` into one line on stderr and exit 1.

    ``SALMONN_DEBUG=1`` re-raises instead, with the traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # Ctrl-C: the job was stopped (workers released) on the way out
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except SettingsError as err:
            raise click.UsageError(str(err)) from None
        except SalmonnError as err:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            from .model_errors import describe

            raise click.ClickException(describe(err) or error_line(err)) from None


@click.group(
    cls=SalmonnGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="salmonn")
def cli() -> None:
    """SALMONN: speech, audio and music understanding with an LLM, over files and folders.

    Data goes to stdout (or -o), progress and messages to stderr. Exit code: 0 when every file succeeded,
    1 when one failed, 2 for usage errors. Set SALMONN_DEBUG=1 for tracebacks.
    """
    from salmonn.model.threads import configure_threads

    configure_threads()  # before torch loads: threads for the CPUs we may use, passive waits


def _paths_arg(func: Any) -> Any:
    # not required by Click: --files-from may give every input (run.collect_inputs checks for none)
    return click.argument("paths", nargs=-1, metavar="[PATH]...")(func)


def _run(params: dict[str, Any], task: str, **task_args: Any) -> None:
    """Build the library task from the command's arguments and run it."""
    per_chunk = params.pop("per_chunk", False)
    if task not in ("transcribe", "translate"):
        task_args["per_chunk"] = per_chunk
    try:
        chosen = make_task(task, **task_args)
    except PromptError as err:
        raise click.UsageError(str(err)) from None
    executor = ray_executor(params)  # None without --ray
    if chosen.note:
        click.echo(f"warning: {chosen.note}", err=True)
    run_task(params, chosen, executor)


@cli.command()
@_paths_arg
@click.option(
    "--language",
    type=click.Choice(TRANSCRIBE_LANGUAGES),
    default="en",
    show_default=True,
    help="Language of the speech (picks the trained prompt of that language).",
)
@common_options
def transcribe(language: str, **params: Any) -> None:
    """Speech recognition: the words spoken, chunk by chunk with their times.

    PATH: files, folders, glob patterns, or - for standard input.
    """
    _run(params, "transcribe", language=language)


@cli.command()
@_paths_arg
@click.option(
    "--to",
    "target",
    required=True,
    metavar="LANG",
    help="Target language, a code or its English name: zh (trained), de or ja (emergent), or "
    "another (warned).",
)
@common_options
def translate(target: str, **params: Any) -> None:
    """Speech translation from English (English -> Chinese was trained)."""
    if not target.strip():
        raise click.BadParameter(
            "empty language; give a code or a name, e.g. --to zh", param_hint="--to"
        )
    _run(params, "translate", to=target)


@cli.command()
@_paths_arg
@click.option("--music", is_flag=True, help="Use the music-description prompt.")
@PER_CHUNK_OPTION
@common_options
def caption(music: bool, **params: Any) -> None:
    """Describe the audio (speech, sounds, music)."""
    _run(params, "caption", music=music)


@cli.command()
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@click.argument("question")
@PER_CHUNK_OPTION
@common_options
def ask(question: str, **params: Any) -> None:
    """Ask a free QUESTION about the audio, e.g. salmonn ask meeting.wav "who is angry?"."""
    if not question.strip():
        raise click.BadParameter("the question is empty", param_hint="QUESTION")
    paths = params["paths"]
    if not paths and params.get("list_file") is None and os.path.lexists(question):
        raise click.UsageError(
            f"missing the QUESTION after the audio: salmonn ask {shlex.quote(question)} "
            '"what is happening?"'
        )
    misplaced = [p for p in paths if p != "-" and not os.path.lexists(p) and not glob.glob(p)]
    if misplaced and os.path.lexists(question):  # salmonn ask "who is angry?" meeting.wav
        files = " ".join(
            shlex.quote(p) for p in [*(p for p in paths if p not in misplaced), question]
        )
        raise click.UsageError(
            f"the question goes last, after the audio: salmonn ask {files} "
            f"{shlex.quote(misplaced[0])}"
        )
    _run(params, "ask", question=question)


@cli.command()
@_paths_arg
@PER_CHUNK_OPTION
@common_options
def story(**params: Any) -> None:
    """Audio-based storytelling: a story inspired by what is heard."""
    _run(params, "story")


@cli.command()
@_paths_arg
@click.option("--question", metavar="Q", help="Ask Q instead of the speaker's own spoken question.")
@PER_CHUNK_OPTION
@common_options
def reason(question: str | None, **params: Any) -> None:
    """Speech-audio co-reasoning: the speaker's question answered using the background sound."""
    _run(params, "reason", question=question)


def _parse_vars(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    result = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected NAME=VALUE, got {value!r}")
        result[key] = val
    return result


@cli.command()
@_paths_arg
@click.option("-t", "--template", metavar="NAME", help="A template of `salmonn prompts`.")
@click.option("--text", metavar="INSTRUCTION", help="A raw instruction for the audio.")
@click.option(
    "--var",
    "variables",
    multiple=True,
    callback=_parse_vars,
    metavar="NAME=VALUE",
    help="Value of a template variable (repeatable).",
)
@PER_CHUNK_OPTION
@common_options
def prompt(
    template: str | None, text: str | None, variables: dict[str, str], **params: Any
) -> None:
    """Run any prompt template, or a raw instruction, over the audio."""
    if (template is None) == (text is None):
        raise click.UsageError("give exactly one of --template NAME and --text INSTRUCTION")
    if text is not None:
        if variables:
            raise click.UsageError("--var goes with --template, not --text")
        _run(params, "prompt", text=text)
    else:
        _run(params, "prompt", template=template, variables=variables)


def _register_helpers() -> None:
    from .eval import eval_group
    from .helpers import dev, doctor, models, prompts
    from .serve import serve
    from .train import train

    for command in (prompts, models, doctor, dev, serve, eval_group, train):
        cli.add_command(command)


_register_helpers()
