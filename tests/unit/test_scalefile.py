"""The scale file: only numprocs of the one section changes, byte for byte, and the file is replaced whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.supervisor.scalefile import ScaleFileError, atomic_write, defines_section, read_text, set_numprocs

CONF = """\
; the consumer count lives here
[program:producer]
numprocs = 1

[program:consumer]   ; the consumers
command = python -m pipeline.consumer
numprocs = 3   ; scaled by supervisorctl scale
  numprocs = continuation, not an option
process_name = %(program_name)s_%(process_num)02d
"""


def test_only_the_sections_numprocs_changes() -> None:
    out = set_numprocs(CONF, "program:consumer", 5)
    assert out == CONF.replace("numprocs = 3   ;", "numprocs = 5   ;")
    assert set_numprocs(out, "program:consumer", 3) == CONF


def test_every_numprocs_of_the_section_is_set_since_the_last_one_wins() -> None:
    text = "[program:consumer]\nnumprocs=1\nNUMPROCS : 2\n[other]\nnumprocs=7\n"
    expected = "[program:consumer]\nnumprocs=4\nNUMPROCS : 4\n[other]\nnumprocs=7\n"
    assert set_numprocs(text, "program:consumer", 4) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("[program:consumer]\ncommand = x\n", "[program:consumer]\nnumprocs=2\ncommand = x\n"),
    ("[program:consumer]\r\ncommand = x\r\n", "[program:consumer]\r\nnumprocs=2\r\ncommand = x\r\n"),
    ("[program:consumer]", "[program:consumer]\nnumprocs=2\n"),
])
def test_a_missing_numprocs_goes_right_after_the_header_with_its_line_ending(text: str, expected: str) -> None:
    assert set_numprocs(text, "program:consumer", 2) == expected


def test_a_missing_section_is_an_error() -> None:
    with pytest.raises(ScaleFileError, match=r"no \[program:consumer\] section"):
        set_numprocs("[program:producer]\nnumprocs=1\n", "program:consumer", 2)


def test_section_headers_are_read_like_configparser_does() -> None:
    assert defines_section(CONF, "program:consumer")  # with an inline comment
    assert not defines_section("  [program:consumer]\n", "program:consumer")  # indented: a continuation
    assert not defines_section("; [program:consumer]\n", "program:consumer")
    assert not defines_section(CONF, "program:other")


def test_atomic_write_replaces_the_file_keeps_its_mode_and_link(tmp_path: Path) -> None:
    real = tmp_path / "real.conf"
    real.write_text(CONF)
    real.chmod(0o640)
    link = tmp_path / "consumer.conf"
    link.symlink_to(real)
    atomic_write(str(link), "new\r\n")
    assert link.is_symlink() and read_text(str(link)) == "new\r\n"  # line endings kept both ways
    assert oct(real.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consumer.conf", "real.conf"]  # no temp file left


def test_unreadable_or_unwritable_files_are_scale_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ScaleFileError, match="cannot read"):
        read_text(str(tmp_path / "missing.conf"))
    (tmp_path / "latin1.conf").write_bytes(b"caf\xe9")
    with pytest.raises(ScaleFileError, match="cannot read"):
        read_text(str(tmp_path / "latin1.conf"))
    with pytest.raises(ScaleFileError, match="cannot write"):
        atomic_write(str(tmp_path / "no-such-dir" / "x.conf"), "x")
    target = tmp_path / "x.conf"
    target.write_text("old")
    if os.geteuid() != 0:  # root writes anyway
        tmp_path.chmod(0o500)
        try:
            with pytest.raises(ScaleFileError, match="cannot write"):
                atomic_write(str(target), "new")
        finally:
            tmp_path.chmod(0o755)
        assert target.read_text() == "old"
