"""Output writers: each format parsed back the way a consumer would read it."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest

from salmonn.errors import ConfigError
from salmonn.jobs.records import Record, Segment
from salmonn.jobs.writers import WRITERS, Writer, get_writer, srt_time, vtt_time


def _record(path="a/one.wav", segments=None, error=None) -> Record:
    if segments is None:
        segments = [
            Segment(0.0, 29.5, "First part."),
            Segment(29.5, 30.0, "  "),  # empty cue: skipped by subtitle formats
            Segment(30.0, 3725.0625, "Second\n\npart --> with <b> & tab\there."),
        ]
    text = None if error else " ".join(s.text for s in segments)
    return Record(
        path, "transcribe", "p", text, [] if error else segments, 3725.0625, error, {}, {}, {}
    )


def _run(fmt: str, records: list[Record], multi: bool = False) -> str:
    stream = io.StringIO()
    writer = get_writer(fmt)(stream, multi=multi) if multi else get_writer(fmt)(stream)
    for record in records:
        writer.write(record)
    writer.close()
    writer.close()  # closing twice writes nothing more
    return stream.getvalue()


def test_registry():
    assert set(WRITERS) == {"text", "json", "jsonl", "srt", "vtt", "tsv"}
    for name, cls in WRITERS.items():
        assert issubclass(cls, Writer) and get_writer(name) is cls
        assert cls.extension == {"text": ".txt"}.get(name, "." + name)
    with pytest.raises(ConfigError, match="choose from text, json"):
        get_writer("xml")


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0, "00:00:00,000", "00:00:00.000"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3725.0625, "01:02:05,063", "01:02:05.063"),  # halves round up
        (6.6235, "00:00:06,624", "00:00:06.624"),
        (362439.5, "100:40:39,500", "100:40:39.500"),
    ],
)
def test_times(seconds, srt, vtt):
    assert srt_time(seconds) == srt and vtt_time(seconds) == vtt


def test_jsonl_flushes_each_line_and_keeps_errors():
    flushed = []

    class Spy(io.StringIO):
        def flush(self):
            flushed.append(self.getvalue())

    stream = Spy()
    writer = get_writer("jsonl")(stream)
    records = [_record(), _record("bad.wav", error="bad.wav: no audio stream")]
    for record in records:
        writer.write(record)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [r.to_dict() for r in records]
    assert flushed[0] == lines[0] + "\n"  # the first line was whole on the stream before the second
    assert json.loads(lines[1])["error"] == "bad.wav: no audio stream"


def test_json_single_and_array():
    one = _run("json", [_record()])
    assert json.loads(one) == _record().to_dict()
    many = _run("json", [_record(), _record("bad.wav", error="boom")], multi=True)
    assert [r["path"] for r in json.loads(many)] == ["a/one.wav", "bad.wav"]
    assert json.loads(_run("json", [], multi=True)) == []
    stream = io.StringIO()
    writer = get_writer("json")(stream, multi=True)
    writer.write(_record())
    assert stream.getvalue().startswith("[\n")  # written incrementally; "]" only at close
    with pytest.raises(json.JSONDecodeError):
        json.loads(stream.getvalue())
    single = get_writer("json")(io.StringIO())
    single.write(_record())
    with pytest.raises(ConfigError, match="multi=True"):
        single.write(_record())


SRT_CUE = re.compile(r"(\d+)\n(\d\d+:\d\d:\d\d,\d{3}) --> (\d\d+:\d\d:\d\d,\d{3})\n((?:.+\n)+)\n")
VTT_CUE = re.compile(r"(\d+)\n(\d\d+:\d\d:\d\d\.\d{3}) --> (\d\d+:\d\d:\d\d\.\d{3})\n((?:.+\n)+)\n")


def _cues(pattern: re.Pattern, text: str) -> list[tuple[str, ...]]:
    return pattern.findall(text)


def test_srt_structure_numbering_and_skips():
    out = _run("srt", [_record(), _record("bad.wav", error="boom"), _record("b.wav")])
    cues = _cues(SRT_CUE, out)
    assert out == "".join(m.group(0) for m in SRT_CUE.finditer(out))  # nothing but cues
    assert [c[0] for c in cues] == [
        "1",
        "2",
        "3",
        "4",
    ]  # continuous over records, empty cue skipped
    assert cues[0][1:] == ("00:00:00,000", "00:00:29,500", "First part.\n")
    assert cues[1][1:3] == ("00:00:30,000", "01:02:05,063")
    assert cues[1][3] == "Second\npart -> with <b> & tab\there.\n"
    assert _run("srt", [_record(error="boom")]) == ""


def test_vtt_structure_escapes_and_notes():
    single = _run("vtt", [_record()])
    assert single.startswith("WEBVTT\n\n") and "NOTE" not in single
    cues = _cues(VTT_CUE, single)
    assert single == "WEBVTT\n\n" + "".join(m.group(0) for m in VTT_CUE.finditer(single))
    assert [c[1:3] for c in cues] == [
        ("00:00:00.000", "00:00:29.500"),
        ("00:00:30.000", "01:02:05.063"),
    ]
    assert cues[1][3] == "Second\npart -&gt; with &lt;b&gt; &amp; tab\there.\n"
    multi = _run("vtt", [_record(), _record("bad.wav", error="x"), _record("b.wav")], multi=True)
    assert multi.count("WEBVTT") == 1
    assert re.findall(r"^NOTE (.*)$", multi, re.M) == ["a/one.wav", "b.wav"]
    assert [c[0] for c in _cues(VTT_CUE, multi)] == ["1", "2", "3", "4"]
    rest = VTT_CUE.sub("", multi.replace("WEBVTT\n\n", "", 1))
    assert rest == "NOTE a/one.wav\n\nNOTE b.wav\n\n"  # nothing but header, notes and cues
    assert _run("vtt", [_record(error="boom")]) == "WEBVTT\n\n"


def test_tsv_columns():
    rows = list(csv.reader(io.StringIO(_run("tsv", [_record()])), delimiter="\t"))
    assert rows == [
        ["start", "end", "text"],
        ["0", "29500", "First part."],
        ["30000", "3725063", "Second part --> with <b> & tab here."],
    ]
    out = _run("tsv", [_record(), _record("bad.wav", error="x"), _record("b/two.wav")], multi=True)
    rows = list(csv.reader(io.StringIO(out), delimiter="\t"))
    assert rows[0] == ["path", "start", "end", "text"]
    assert [r[0] for r in rows[1:]] == ["a/one.wav"] * 2 + ["b/two.wav"] * 2
    assert all(len(r) == 4 for r in rows)
    assert _run("tsv", []) == "start\tend\ttext\n"


def test_text():
    assert _run("text", [_record()]) == _record().text + "\n"
    assert _run("text", [_record(error="boom")]) == ""
    out = _run("text", [_record(), _record("bad.wav", error="x"), _record("b.wav")], multi=True)
    text = _record().text
    assert out == f"==> a/one.wav <==\n{text}\n\n==> b.wav <==\n{text}\n"


def test_subtitles_without_segments_use_duration():
    record = Record("s.wav", "caption", "p", "A dog barks.", [], 12.5, None, {}, {}, {})
    assert _run("srt", [record]) == "1\n00:00:00,000 --> 00:00:12,500\nA dog barks.\n\n"


def test_one_rounding_rule_for_times_in_every_format():
    # 6.6235 s is 6.62349999... in binary: round(x, 3) gave 6.623 in JSON and 6624 ms in SRT
    rng = np.random.default_rng(3)
    starts = [6.6235, 0.0005, 1.0015, 2.675, 3725.0625, *(rng.integers(0, 10**7, 300) / 2000)]
    segments = [Segment(s, s + 0.5, f"w{i}") for i, s in enumerate(starts)]
    record = Record("t.wav", "transcribe", "p", "x", segments, 9999.0, None, {}, {}, {})
    from_json = [
        round(seg["start"] * 1000) for seg in json.loads(_run("jsonl", [record]))["segments"]
    ]

    def ms(clock: str) -> int:
        h, m, s = re.split("[:]", clock.replace(",", "."))
        return (int(h) * 3600 + int(m) * 60) * 1000 + int(s.replace(".", ""))

    from_srt = [ms(c[1]) for c in _cues(SRT_CUE, _run("srt", [record]))]
    from_vtt = [ms(c[1]) for c in _cues(VTT_CUE, _run("vtt", [record]))]
    rows = list(csv.reader(io.StringIO(_run("tsv", [record])), delimiter="\t"))[1:]
    from_tsv = [int(r[0]) for r in rows]
    assert from_json[0] == 6624
    assert from_json == from_srt == from_vtt == from_tsv


CONTROLS = "\x00\x03\x07\x08\x0b\x0c\x10\x19\x1b[31m\x7f\x9b2J\r"


def test_control_characters_never_reach_non_json_output():
    dirty = f"Hi{CONTROLS}there\tyou.\nNext\x1b]0;title\x07 line."
    segments = [Segment(0.0, 2.0, dirty), Segment(2.0, 3.0, "\x03\x1b"), Segment(3.0, 4.0, "ok")]
    record = Record(
        f"od\x1bd{CONTROLS}.wav", "transcribe", "p", dirty, segments, 4.0, None, {}, {}, {}
    )
    other = Record(
        "b.wav", "transcribe", "p", "fine", [Segment(0, 1, "fine")], 1.0, None, {}, {}, {}
    )
    control = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
    for fmt in ("text", "srt", "vtt", "tsv"):
        for multi in (False, True):
            out = _run(fmt, [record, other], multi=True) if multi else _run(fmt, [record])
            assert not control.search(out), (fmt, multi, out)
            assert "Hi[31m" in out.replace("[31m2J", "[31m")  # printable rest kept
    srt = _cues(SRT_CUE, _run("srt", [record]))
    assert [c[0] for c in srt] == ["1", "2"]  # a segment of controls only is an empty cue: skipped
    assert srt[0][3] == "Hi[31m2J\nthere\tyou.\nNext]0;title line.\n"  # a CR is a line break
    text = _run("text", [record])
    assert text == "Hi[31m2J\nthere\tyou.\nNext]0;title line.\n"  # tab and newline kept
    tsv = list(csv.reader(io.StringIO(_run("tsv", [record])), delimiter="\t"))
    assert tsv[1][2] == "Hi[31m2J there you. Next]0;title line."
    assert json.loads(_run("jsonl", [record]))["text"] == dirty  # JSON keeps them, escaped
    assert "\x1b" not in _run("jsonl", [record])
