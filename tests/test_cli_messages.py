"""What a new user reads: messages that name the flag and say the right thing, the progress total with a
broken input, language names, listed paths as data, the config file named on purpose."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import invoke, jsonl, tone

pytestmark = pytest.mark.usefixtures("clean_salmonn_env")

FAST = ["--device", "cpu", "--max-new-tokens", "4", "--num-beams", "1"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("messages")
    tone(root / "a.wav", 2.0)
    (root / "b.wav").write_text("this is not audio")
    tone(root / "c.wav", 3.0, 300.0)
    return root


# ----------------------------------------------------------------------- progress and failures


def test_a_broken_input_keeps_the_audio_total(tree):
    from salmonn_cli.progress import _Durations

    durations = _Durations([str(tree / n) for n in ("a.wav", "b.wav", "c.wav")])
    durations._thread.join(timeout=60)
    assert durations.total() == pytest.approx(5.0, abs=0.01)  # b.wav counts as no audio


def test_fail_fast_counts_the_inputs_it_tried(tree, model_flags):
    args = ["transcribe", tree, *model_flags, *FAST, "--fail-fast", "--batch-size", "1"]
    result = invoke(args)
    assert result.exit_code == 1
    assert len(jsonl(result.stdout)) == 2
    assert "1 of 2 inputs failed" in result.stderr
    assert "1 input not run (--fail-fast)" in result.stderr


def test_listed_paths_that_do_not_exist_are_failed_inputs(tree, model_flags, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tree / 'a.wav'}\n{tmp_path / 'gone.wav'}\n{tree / 'c.wav'}\n")
    result = invoke(["transcribe", "--files-from", listing, *model_flags, *FAST, "-q"])
    assert result.exit_code == 1, result.output
    records = jsonl(result.stdout)
    assert [Path(r["path"]).name for r in records] == ["a.wav", "gone.wav", "c.wav"]
    assert [r["error"] is None for r in records] == [True, False, True]
    assert "no such file or directory" in records[1]["error"]
    typed = invoke(["transcribe", tmp_path / "gone.wav", *model_flags, *FAST])
    assert typed.exit_code == 2  # typed on the command line: still a usage error


# ----------------------------------------------------------------------------------- languages


@pytest.mark.parametrize(("name", "code"), [("Chinese", "zh"), ("german", "de"), ("JA", "ja")])
def test_language_names_are_their_codes(name, code):
    from salmonn import make_task

    by_name, by_code = make_task("translate", to=name), make_task("translate", to=code)
    assert by_name.note is None
    assert by_name.spec() == by_code.spec()


def test_an_untrained_language_is_still_warned():
    from salmonn import make_task

    assert "neither trained" in make_task("translate", to="French").note


def test_empty_language_names_the_flag(tree):
    result = invoke(["translate", tree / "a.wav", "--to", ""])
    assert result.exit_code == 2
    assert "--to" in result.stderr and "to='zh'" not in result.stderr


# -------------------------------------------------------------------------------- usage words


def test_summary_template_does_not_suggest_var(tree):
    result = invoke(["prompt", "-t", "summary.caption", tree / "a.wav"])
    assert result.exit_code == 2
    assert "text template" in result.stderr and "--var" not in result.stderr


def test_channel_help_says_it_counts_from_zero():
    text = re.sub(r"\s+", " ", invoke(["transcribe", "--help"]).output)
    assert "counted from 0" in text and "(1-based)" in text


def test_a_missing_config_file_named_by_env_is_an_error(tree, monkeypatch, tmp_path):
    monkeypatch.setenv("SALMONN_CONFIG", str(tmp_path / "nope.toml"))
    result = invoke(["transcribe", tree / "a.wav"])
    assert result.exit_code == 2
    assert f"SALMONN_CONFIG: {tmp_path / 'nope.toml'}: no such file" in result.stderr


def test_doctor_names_no_preset_when_all_paths_are_given(model_flags):
    result = invoke(["doctor", *model_flags])
    model = next(line for line in result.output.splitlines() if line.strip().startswith("model "))
    assert "salmonn-7b" not in model and "no preset" in model
    device = next(line for line in result.output.splitlines() if line.strip().startswith("device "))
    assert re.search(r"device\s+(cpu|cuda)\b", device), device


def test_a_local_ray_cluster_starts_without_ray_s_token_notice(tmp_path):
    pytest.importorskip("ray")
    import subprocess
    import sys

    code = (
        "import ray\nfrom salmonn.cluster.runner import _connect\n"
        "_connect(ray, 'local')\nray.shutdown()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "token authentication" not in done.stderr.lower()
