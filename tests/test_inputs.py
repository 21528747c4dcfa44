"""expand_inputs over trees built here: order, filters, hidden files, links, globs, list files."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

import pytest
from helpers import nest_past_path_max

import salmonn
from salmonn.audio.inputs import InputItem, expand_inputs
from salmonn.errors import AudioError, ConfigError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "in"
    # created in reverse order: the result must not depend on creation order
    for rel in ["sub/deeper/d.m4a", "sub/c.FLAC", "notes.txt", ".hidden.wav", ".hid/e.wav",
                "b.mp3", "a.wav", "B.MP4", "a-b/f.opus"]:  # fmt: skip
        touch(root / rel)
    return root


def rels(items: list[InputItem]) -> list[str]:
    return [i.relpath for i in items]


def test_directory_sorted_recursive_filtered(tree):
    items = expand_inputs([str(tree)])
    assert rels(items) == [
        "B.MP4",
        "a-b/f.opus",
        "a.wav",
        "b.mp3",
        "sub/c.FLAC",
        "sub/deeper/d.m4a",
    ]
    assert all(i.root == str(tree) and i.path == os.path.join(str(tree), i.relpath) for i in items)
    assert salmonn.expand_inputs([str(tree)]) == items  # public name, deterministic


def test_tree_order_puts_a_folder_before_siblings_named_after_it(tree):
    touch(tree / "a" / "z.wav")
    assert rels(expand_inputs([str(tree)]))[:3] == ["B.MP4", "a/z.wav", "a-b/f.opus"]


def test_not_recursive_hidden_and_extensions(tree):
    assert rels(expand_inputs([str(tree)], recursive=False)) == ["B.MP4", "a.wav", "b.mp3"]
    hidden = rels(expand_inputs([str(tree)], include_hidden=True))
    assert ".hidden.wav" in hidden and ".hid/e.wav" in hidden
    assert rels(expand_inputs([str(tree)], extensions=["TXT", ".mp3"])) == ["b.mp3", "notes.txt"]


def test_plain_file_keeps_its_name_and_any_extension(tree):
    (item,) = expand_inputs([str(tree / "notes.txt")])
    assert item == InputItem(str(tree / "notes.txt"), str(tree), "notes.txt")
    (bare,) = expand_inputs(["-"])
    assert bare == InputItem("-", "-", "-")


def test_arguments_keep_their_order_and_duplicates_are_dropped(tree):
    items = expand_inputs([str(tree / "b.mp3"), str(tree / "sub"), str(tree / "b.mp3")])
    assert [(i.root, i.relpath) for i in items] == [
        (str(tree), "b.mp3"),
        (str(tree / "sub"), "c.FLAC"),
        (str(tree / "sub"), os.path.join("deeper", "d.m4a")),
    ]


def test_symlink_loop_and_broken_link(tree):
    (tree / "sub" / "loop").symlink_to(tree, target_is_directory=True)
    (tree / "dangling.wav").symlink_to(tree / "nowhere.wav")
    errors: list[AudioError] = []
    items = expand_inputs([str(tree)], on_error=errors.append)
    # inside a walked folder a broken link is one input (it fails when decoded), not a usage error
    assert rels(items) == [
        "B.MP4",
        "a-b/f.opus",
        "a.wav",
        "b.mp3",
        "dangling.wav",
        "sub/c.FLAC",
        "sub/deeper/d.m4a",
    ]
    assert errors == []
    assert rels(expand_inputs([str(tree / "*.wav")])) == ["a.wav", "dangling.wav"]
    # named on the command line, it is reported
    with pytest.raises(AudioError, match="dangling.wav: broken symbolic link"):
        expand_inputs([str(tree / "dangling.wav")])


def test_missing_paths_raise_or_are_reported(tree):
    missing = str(tree / "missing.wav")
    with pytest.raises(AudioError) as info:
        expand_inputs([missing])
    assert (info.value.path, info.value.reason) == (missing, "no such file or directory")
    errors: list[AudioError] = []
    items = expand_inputs([missing, str(tree / "a.wav")], on_error=errors.append)
    assert rels(items) == ["a.wav"] and [e.path for e in errors] == [missing]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory")
def test_unreadable_sub_folder_is_an_input_and_a_named_one_an_error(tree):
    locked = tree / "sub"
    locked.chmod(0)
    try:
        errors: list[AudioError] = []
        items = expand_inputs([str(tree)], on_error=errors.append)
        assert rels(items) == ["B.MP4", "a-b/f.opus", "a.wav", "b.mp3", "sub"] and errors == []
        expand_inputs([str(locked)], on_error=errors.append)
        assert [(e.path, e.reason) for e in errors] == [(str(locked), "Permission denied")]
    finally:
        locked.chmod(0o755)


def test_sub_folder_past_the_path_limit_is_an_input(tmp_path):
    # a real failure to list a folder, as root too
    touch(tmp_path / "in" / "a.wav")
    (tmp_path / "in" / "sub").mkdir()
    deepest = nest_past_path_max(tmp_path / "in" / "sub")
    errors: list[AudioError] = []
    items = expand_inputs([str(tmp_path / "in")], on_error=errors.append)
    assert [i.path for i in items] == [str(tmp_path / "in" / "a.wav"), deepest] and errors == []


def test_glob_patterns(tree, monkeypatch):
    items = expand_inputs([str(tree / "**" / "*.m4a"), str(tree / "*.wav")])
    assert [(i.root, i.relpath) for i in items] == [
        (str(tree), os.path.join("sub", "deeper", "d.m4a")),
        (str(tree), "a.wav"),
    ]
    monkeypatch.chdir(tree)
    assert [(i.path, i.root) for i in expand_inputs(["s*"])] == [
        (os.path.join("sub", "c.FLAC"), "."),
        (os.path.join("sub", "deeper", "d.m4a"), "."),
    ]
    with pytest.raises(AudioError, match="pattern matched nothing"):
        expand_inputs(["*.aiff"])


def test_list_file_and_stdin_list(tree, monkeypatch):
    listing = tree.parent / "list.txt"
    listing.write_text(f"# my files\n{tree / 'b.mp3'}\n\n  {tree / 'sub'}  \n")
    items = expand_inputs([str(tree / "a.wav")], list_file=str(listing))
    assert rels(items) == ["a.wav", "b.mp3", "c.FLAC", os.path.join("deeper", "d.m4a")]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{tree / 'b.mp3'}\n"))
    assert rels(expand_inputs([], list_file="-")) == ["b.mp3"]
    with pytest.raises(ConfigError):
        expand_inputs(["-"], list_file="-")
    with pytest.raises(AudioError, match="cannot read the list file"):
        expand_inputs([], list_file=str(tree / "no-list.txt"))


def test_empty_directory_gives_nothing_and_an_info_log(tmp_path, caplog):
    # INFO, not WARNING: the CLI says it once itself (a usage error, or a note beside other inputs)
    caplog.set_level(logging.INFO, logger="salmonn")
    (tmp_path / "empty").mkdir()
    assert expand_inputs([str(tmp_path / "empty")]) == []
    assert "no audio or video files" in caplog.text


def test_unreadable_directory_is_reported_even_as_root(tree, monkeypatch):
    real_scandir = os.scandir
    locked = {str(tree / "sub")}

    def scandir(path="."):
        if os.fspath(path) in locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # what os.walk meets on a chmod 000 folder
    errors: list[AudioError] = []
    items = expand_inputs([str(tree)], on_error=errors.append)
    assert rels(items) == ["B.MP4", "a-b/f.opus", "a.wav", "b.mp3", "sub"] and errors == []
    locked.add(str(tree))  # the folder named on the command line: reported
    assert expand_inputs([str(tree)], on_error=errors.append) == []
    assert [(e.path, e.reason) for e in errors] == [(str(tree), "Permission denied")]


def test_named_pipe_is_taken_when_named(tmp_path):
    fifo = tmp_path / "stream.mp3"
    os.mkfifo(fifo)
    assert expand_inputs([str(fifo)]) == [InputItem(str(fifo), str(tmp_path), "stream.mp3")]
