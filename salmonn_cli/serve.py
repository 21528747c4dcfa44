"""``salmonn serve``: the OpenAI-compatible HTTP server (the ``serve`` extra).

The model and decoding flags are those of the task commands (the decoding flags set the server's
defaults); the server itself lives in :mod:`salmonn.serve`.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import click

from salmonn.serve.config import ServeConfig

from .options import BATCH_SIZE_OPTION, DECODING_OPTIONS, MODEL_OPTIONS, apply
from .progress import Reporter, setup_logging
from .settings import (
    ModelSettings,
    SettingsError,
    generation_options,
    sampling_without_do_sample,
)
from .sources import DEFAULT_MODEL

API_KEY_ENV = "SALMONN_API_KEY"
_DEFAULTS = ServeConfig()  # the one place the server's defaults are set


# the task commands' model flags, less --batch-size (here --max-batch-size, across requests)
_MODEL_OPTIONS = [o for o in MODEL_OPTIONS if o is not BATCH_SIZE_OPTION]


@click.command()
@apply(_MODEL_OPTIONS)
@apply(DECODING_OPTIONS)
@click.option("--host", default=_DEFAULTS.host, show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=_DEFAULTS.port,
    show_default=True,
    help="Port to listen on (0: any free port; the ready line names it).",
)
@click.option(
    "--served-model-name",
    metavar="NAME",
    help="Model id of /v1/models and requests. [default: the preset name, or 'salmonn' when "
    "the components are given by path]",
)
@click.option(
    "--api-key",
    envvar=API_KEY_ENV,
    metavar="KEY",
    help=f"Require 'Authorization: Bearer KEY' on /v1/*; /health and /metrics (counts only) "
    f"stay open. [env {API_KEY_ENV}]",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_batch_size,
    show_default=True,
    metavar="N",
    help="Most audio chunks (or text prompts) in one model call, across requests.",
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.batch_wait_ms,
    show_default=True,
    metavar="MS",
    help="How long a model call waits for calls of other requests in flight.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_queue,
    show_default=True,
    metavar="N",
    help="Requests admitted at once; more get 503 with Retry-After.",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.max_upload_mb,
    show_default=True,
    metavar="MB",
    help="Largest audio upload.",
)
@click.option(
    "--max-audio-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.max_audio_seconds,
    show_default=True,
    metavar="S",
    help="Longest audio accepted.",
)
@click.option(
    "--allowed-local-media-path",
    type=click.Path(exists=True, file_okay=False, resolve_path=True),
    metavar="DIR",
    help="Let requests name files under DIR with file:// URLs. [default: refused]",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.request_timeout,
    show_default=True,
    metavar="S",
    help="Seconds a request's body may take to arrive in full; slower ones get 408. A request "
    "takes a queue slot only once its body is in.",
)
@click.option(
    "--graceful-shutdown-seconds",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.graceful_shutdown_s,
    show_default=True,
    metavar="S",
    help="On SIGINT/SIGTERM, how long requests in flight may take to finish; those still "
    "running then get 503 shutting_down.",
)
@click.option(
    "--allowed-hosts",
    metavar="H1,H2",
    help="Host names the Host header may name ('*': any). [default: the --host address (with "
    "localhost when it is a loopback address); any with 0.0.0.0 or ::]",
)
@click.option(
    "--allowed-origins",
    metavar="O1,O2",
    help="Web origins (https://app.example, or '*') whose pages may call the server; CORS "
    "headers are sent for these only. [default: none but the server's own]",
)
@click.option(
    "--no-web-ui",
    is_flag=True,
    help="Do not serve the browser page at / (404), for API-only deployments.",
)
@click.option(
    "-v", "--verbose", count=True, help="Log to stderr (-v info and access log, -vv debug)."
)
def serve(**params: Any) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (chat, transcriptions, translations).

    Needs the serve extra: pip install 'salmonn[serve]'. Answers equal the task commands' for the
    same file and settings; concurrent requests are batched into shared model calls.
    """
    from salmonn.serve import SERVE_EXTRA_HINT, missing_packages

    missing = missing_packages()
    if missing:
        raise click.ClickException(
            f"salmonn serve needs the serve extra ({', '.join(missing)} missing): {SERVE_EXTRA_HINT}"
        )
    setup_logging(params["verbose"])
    reporter = Reporter(quiet=False)
    config, load = _build(params, reporter)
    from salmonn.serve import ListenError, run_server

    def ready(url: str) -> None:
        also = "".join(f", also answers to {a!r}" for a in config.model_aliases)
        click.echo(
            f"salmonn serve: ready at {url} (model {config.served_model_name!r}{also})", err=True
        )
        if config.web_ui:
            click.echo(f"salmonn serve: web page at {url.removesuffix('/v1')}/", err=True)

    log_level = {0: "warning", 1: "info"}.get(params["verbose"], "debug")
    try:
        run_server(config, load, on_ready=ready, log_level=log_level)
    except ListenError as err:
        if err.what == "host":
            raise click.BadParameter(err.reason, param_hint=f"--host {err.value}") from None
        raise click.ClickException(
            f"--port {err.value}: {err.reason} (another server? choose another --port, or "
            "--port 0 for any free one)"
        ) from None
    except KeyboardInterrupt:  # Ctrl-C before the server took over the signals
        _leave_now_if_loading(load, 130, "salmonn serve: interrupted")
        raise
    _leave_now_if_loading(load, 0, "salmonn serve: stopped")
    click.echo("salmonn serve: stopped", err=True)


def _leave_now_if_loading(load: Any, code: int, message: str) -> None:
    """Exit at once when the model load is still running in its thread.

    The interpreter's shutdown while that thread is inside torch can abort the process (``terminate
    called without an active exception``, exit 134); nothing is left to save, so skip the shutdown.
    """
    if load.started.is_set() and not load.finished.is_set():
        click.echo(message, err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _build(params: dict[str, Any], reporter: Reporter) -> tuple[Any, Any]:
    """The server's config and the model loader, from the flags (checked before anything loads)."""
    from salmonn.errors import ConfigError
    from salmonn.serve import DEFAULT_MODEL_NAME, ServeConfig

    try:
        model = ModelSettings.from_params(params, warn=reporter.warn)
        generation = generation_options(params)
        config = ServeConfig(
            host=params["host"],
            port=params["port"],
            served_model_name=params["served_model_name"] or model.preset or DEFAULT_MODEL_NAME,
            # components given by path: README's examples name the default preset
            model_aliases=(DEFAULT_MODEL,)
            if not params["served_model_name"] and model.preset is None
            else (),
            api_key=params["api_key"] or None,
            max_batch_size=params["max_batch_size"],
            batch_wait_ms=params["batch_wait_ms"],
            max_queue=params["max_queue"],
            max_upload_mb=params["max_upload_mb"],
            max_audio_seconds=params["max_audio_seconds"],
            allowed_local_media_path=params["allowed_local_media_path"],
            generation=generation,
            request_timeout=params["request_timeout"],
            graceful_shutdown_s=params["graceful_shutdown_seconds"],
            allowed_hosts=_names(params["allowed_hosts"]) or None,
            allowed_origins=_names(params["allowed_origins"]) or (),
            web_ui=not params["no_web_ui"],
        )
    except (SettingsError, ConfigError) as err:
        raise click.UsageError(str(err)) from None
    sampling = sampling_without_do_sample(params, generation)
    if sampling:
        reporter.warn(f"{', '.join(sampling)} only matter with --do-sample (as defaults)")

    return config, _Loader(model, params["verbose"])


def _names(value: str | None) -> tuple[str, ...] | None:
    """``"a, b"`` -> ``("a", "b")``; ``None`` when not given."""
    if value is None:
        return None
    return tuple(name.strip() for name in value.split(",") if name.strip())


class _Loader:
    """Loads the model (called once, in the server's load thread) and says whether it is running."""

    def __init__(self, model: ModelSettings, verbose: int) -> None:
        self.model, self.verbose = model, verbose
        self.started, self.finished = threading.Event(), threading.Event()

    def __call__(self) -> Any:
        from .run import load_model

        self.started.set()
        try:
            return load_model(self.model, verbose=self.verbose, quiet=True)
        finally:
            self.finished.set()
