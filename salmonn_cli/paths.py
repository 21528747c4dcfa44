"""Where records go: stdout, one FILE, or one file per input under DIR/ (mirroring the input tree).

Also reads what an earlier run left there, for ``--resume``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import click

MANIFEST = (
    ".salmonn-done.jsonl"  # -o DIR/ with a non-JSON format: the finished inputs, one line each
)
JSON_FORMATS = ("json", "jsonl")
# -o FILE without --format: the format its extension names (any other extension: jsonl)
FORMAT_OF_EXTENSION = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".txt": "text",
    ".srt": "srt",
    ".vtt": "vtt",
    ".tsv": "tsv",
}
DEFAULT_FORMAT = "jsonl"


@dataclass(frozen=True)
class OutputPlan:
    """``mode``: ``"stdout"``, ``"file"`` or ``"dir"``; ``target``: the file or folder (``None`` for stdout)."""

    mode: str
    target: Path | None


def plan_output(output: str | None) -> OutputPlan:
    """``-o``: ``None`` or ``-`` is stdout; a value ending in ``/`` or naming a folder is DIR mode."""
    if output is None or output == "-":
        return OutputPlan("stdout", None)
    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        return OutputPlan("dir", Path(output))
    return OutputPlan("file", Path(output))


def choose_format(fmt: str | None, output: str | None) -> str:
    """The output format: ``--format`` when given, else the extension of ``-o FILE``, else jsonl."""
    if fmt is not None:
        return fmt
    plan = plan_output(output)
    if plan.mode == "file" and plan.target is not None:
        return FORMAT_OF_EXTENSION.get(plan.target.suffix.lower(), DEFAULT_FORMAT)
    return DEFAULT_FORMAT


def _safe_parts(path: str) -> list[str]:
    """Path components fit to nest under an output folder (no root, ``..`` made harmless)."""
    parts = [p for p in PurePath(path).parts if p not in ("", ".", os.sep, "/")]
    parts = [p for p in parts if not PurePath(p).anchor]  # drop "/" or "C:\\"
    return ["_up" if p == ".." else p for p in parts] or ["stdin"]


def output_names(items: Sequence[Any], extension: str) -> list[str]:
    """One relative output path per input: its ``relpath`` with ``extension`` instead of its suffix.

    Computed over all inputs (before ``--shard``) so every shard and every resumed run agrees. Clashes are
    resolved deterministically: inputs with the same ``relpath`` (files named explicitly from different
    folders) use their whole path; ``a.wav`` and ``a.mp3`` side by side keep their suffix (``a.wav.json``).
    """
    rels = ["stdin" if i.relpath == "-" else i.relpath for i in items]
    same_rel = Counter(rels)
    rels = [
        str(PurePath(*_safe_parts(os.path.normpath(str(i.path)))))
        if same_rel[r] > 1
        else str(PurePath(*_safe_parts(r)))
        for i, r in zip(items, rels, strict=True)
    ]
    names = [
        str(PurePath(r).with_suffix(extension)) if PurePath(r).suffix else r + extension
        for r in rels
    ]
    clash = Counter(names)
    names = [r + extension if clash[n] > 1 else n for r, n in zip(rels, names, strict=True)]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise click.UsageError(f"two inputs would write the same output file {dupes[0]}")
    return names


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so no other thread sees it change)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a killed run leaves no half file.

    The file gets the mode a plain ``open()`` would give it (0666 less the umask), or keeps the mode of
    the file it replaces.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp makes it 0600
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def repair_jsonl_tail(path: Path) -> bool:
    """Cut a partial last line (a run killed mid-write) so appending starts on a fresh line.

    Returns True when something was cut.
    """
    with open(path, "rb+") as stream:
        stream.seek(0, os.SEEK_END)
        size = stream.tell()
        if size == 0:
            return False
        stream.seek(size - 1)
        if stream.read(1) == b"\n":
            return False
        block = min(size, 1 << 20)
        while True:
            stream.seek(size - block)
            data = stream.read(block)
            cut = data.rfind(b"\n")
            if cut >= 0 or block == size:
                stream.truncate(size - block + cut + 1 if cut >= 0 else 0)
                return True
            block = min(size, block * 2)


@dataclass(frozen=True)
class Done:
    """What an earlier run left for one input: its resume key, the weights it ran with
    (:func:`weights_of`; ``None`` when not recorded) and whether it failed."""

    key: str
    weights: dict[str, Any] | None
    failed: bool


WEIGHT_KEYS = ("preset", "whisper", "beats", "llm", "checkpoint", "lora_scaling", "quantization")


def weights_of(model: dict[str, Any]) -> dict[str, Any]:
    """The part of a record's ``model`` identity that decides its answers: preset, component
    paths, LoRA scaling, quantization (device and dtype only change rounding)."""
    return {key: model.get(key) for key in WEIGHT_KEYS}


def _done_of(record: Any) -> Done:
    return Done(record.resume_key(), weights_of(record.model), record.error is not None)


def _done_in_jsonl(path: Path) -> list[Done]:
    from salmonn.jobs.records import iter_jsonl

    with open(path, encoding="utf-8") as stream:
        return [_done_of(record) for record in iter_jsonl(stream)]


def _done_in_json(path: Path) -> list[Done]:
    from salmonn.jobs.records import Record

    data = json.loads(path.read_text(encoding="utf-8"))
    rows = data if isinstance(data, list) else [data]
    return [_done_of(Record.from_dict(row)) for row in rows]


def done_in_file(path: Path) -> list[Done]:
    """The records of the JSONL file ``path`` (none when it does not exist)."""
    if not path.is_file():
        return []
    return _done_in_jsonl(path)


def done_in_dir(folder: Path, names: Sequence[str], fmt: str) -> list[Done]:
    """What is present under ``folder``: the per-input JSON/JSONL files, else the manifest."""
    done: list[Done] = []
    if fmt in JSON_FORMATS:
        reader = _done_in_jsonl if fmt == "jsonl" else _done_in_json
        for name in names:
            path = folder / name
            if path.is_file():
                try:
                    done += reader(path)
                except (ValueError, OSError):
                    continue  # unreadable: the input is done again
        return done
    manifest = folder / MANIFEST
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                # a failed input wrote no file (non-JSON formats skip error records)
                failed = bool(entry.get("failed", entry.get("output") is None))
                output = entry.get("output")
                if output is not None and not (folder / output).is_file():
                    continue  # its output file was deleted: not done
                done.append(Done(entry["key"], entry.get("weights"), failed))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a torn last line
    return done


def add_to_manifest(folder: Path, record: Any, output: str | None) -> None:
    """Append one finished input to ``folder``'s manifest (non-JSON formats in DIR mode).

    Each line names the input's path and its output file (``null`` when it failed), so a user can
    find an input's line; deleting an output file also makes ``--resume`` run its input again.
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST
    if manifest.is_file() and manifest.stat().st_size:
        repair_jsonl_tail(manifest)
    entry = {
        "path": record.path,
        "output": output,
        "key": record.resume_key(),
        "failed": record.error is not None,
        "weights": weights_of(record.model),
    }
    with open(manifest, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(entry) + "\n")
        stream.flush()
