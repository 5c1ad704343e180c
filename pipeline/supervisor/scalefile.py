"""The scale file: the small included ini file holding a program's section and its numprocs.

Edited line by line (everything but numprocs stays byte for byte) and replaced atomically.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile

# A "numprocs = 3" option line (not indented: indented lines are continuations).
_NUMPROCS_RE = re.compile(r"^(numprocs[ \t]*[=:][ \t]*)(\S*)(.*)$", re.IGNORECASE | re.DOTALL)
_INLINE_COMMENT_RE = re.compile(r"\s[;#].*$")


class ScaleFileError(Exception):
    """The scale file cannot be read, understood or written."""


def _section_header(line: str) -> str | None:
    """Section name if ``line`` is a section header, like configparser reads it."""
    stripped = _INLINE_COMMENT_RE.sub("", line.strip()).rstrip()
    if line[:1].isspace() or not (stripped.startswith("[") and stripped.endswith("]")):
        return None
    return stripped[1:-1]


def defines_section(text: str, section: str) -> bool:
    """True if the ini ``text`` has a ``[section]`` header."""
    return any(_section_header(line) == section for line in text.splitlines())


def set_numprocs(text: str, section: str, count: int) -> str:
    """Return ``text`` with ``numprocs=count`` in ``[section]``, everything else untouched.

    Replaces every numprocs line of the section (configparser keeps the last one) or,
    if there is none, inserts one right after the section header.
    """
    lines = text.splitlines(keepends=True)
    header_at: int | None = None
    in_section = replaced = False
    for i, line in enumerate(lines):
        header = _section_header(line)
        if header is not None:
            in_section = header == section
            if in_section and header_at is None:
                header_at = i
            continue
        match = _NUMPROCS_RE.match(line) if in_section else None
        if match:
            lines[i] = f"{match.group(1)}{count}{match.group(3)}"
            replaced = True
    if header_at is None:
        raise ScaleFileError(f"no [{section}] section")
    if not replaced:
        newline = "\r\n" if lines[header_at].endswith("\r\n") else "\n"
        if not lines[header_at].endswith(("\n", "\r")):
            lines[header_at] += newline
        lines.insert(header_at + 1, f"numprocs={count}{newline}")
    return "".join(lines)


def read_text(path: str) -> str:
    """Read the file keeping its line endings (we write back byte-for-byte)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScaleFileError(f"cannot read {path}: {exc}") from exc


def atomic_write(path: str, text: str) -> None:
    """Replace ``path`` with ``text``: temp file in the same dir + fsync + rename.

    The temp name ends in ``.tmp`` so a concurrent ``[include] files = *.conf`` glob
    never picks it up.  Symlinks are followed so a linked conf.d keeps its link.
    """
    target = os.path.realpath(path)
    directory, name = os.path.split(target)
    tmp: str | None = None
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; keep what the operator chose
        os.replace(tmp, target)
        tmp = None
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ScaleFileError(f"cannot write {path}: {exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
