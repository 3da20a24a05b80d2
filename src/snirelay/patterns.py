"""Server-name patterns: exact names, ``*.suffix`` wildcards and ``~REGEX`` on RE2.

How it works
------------
`compile_pattern(entry)` turns one `server_names` entry into a `NamePattern`: an exact
name (normalised), a wildcard's suffix, or a regex compiled by `compile_regex` for
case-insensitive full matches on RE2 (google-re2, imported at the first regex: its
library costs ~3 MB), whose automaton matches in time linear in the name. The route
table (snirelay.routing) matches with these; the config loader compiles each regex
once to refuse a bad one at load.

Error handling: `compile_pattern` and `compile_regex` raise ValueError with a one-line
reason naming the pattern: a construct RE2 lacks (backreferences, lookaround, atomic
groups, possessive quantifiers, conditionals, ``\\Z``: named), or a pattern past the
bounds `compile_regex` states (length, nesting, repetition, program size).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from snirelay.wire.names import normalize_name

__all__ = ["NamePattern", "Regex", "compile_pattern", "compile_regex", "match_name"]


class Regex(Protocol):
    """A compiled RE2 pattern (the part of google-re2's object used here)."""

    def fullmatch(self, text: bytes) -> object | None: ...


_re2: Any = None  # the google-re2 module, imported by the first regex route


def _re2_module() -> Any:
    """google-re2, imported on first use: its library costs ~3 MB of RSS, which a relay
    without regex routes does not pay. Returns (module, options)."""
    global _re2
    if _re2 is None:
        import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

        options = re2.Options()
        options.case_sensitive = False
        options.never_capture = True  # groups only group: nothing reads a capture
        options.log_errors = False  # RE2 would print parse errors to stderr itself
        _re2 = (re2, options)
    return _re2


# What RE2's parse error starts with (after its "invalid ...: " prefix) -> the construct
_LACKS = (
    ("(?=", "a lookahead (?=...)"),
    ("(?!", "a negative lookahead (?!...)"),
    ("(?<=", "a lookbehind (?<=...)"),
    ("(?<!", "a negative lookbehind (?<!...)"),
    ("(?>", "an atomic group (?>...)"),
    ("(?P=", "a named backreference (?P=name)"),
    ("(?P>", "a recursive call (?P>name)"),
    ("(?(", "a conditional group (?(1)...)"),
    ("(?#", "a comment group (?#...)"),
    ("\\Z", "\\Z (write \\z or $)"),
)


def _lacked(message: str, source: str) -> str | None:
    """The construct an RE2 parse error is about (for a pattern Python accepts), or None."""
    _, _, arg = message.partition(": ")
    if message.startswith("invalid escape sequence: \\") and arg[1:2].isdigit():
        return f"a backreference {arg}"
    if message.startswith("bad repetition operator"):
        return f"a possessive quantifier {arg}"
    if arg == "(?P":  # RE2 has (?P<name>...) but not (?P=name) or (?P>name)
        arg = "(?P>" if "(?P>" in source else "(?P="
    for prefix, what in _LACKS:
        if arg.startswith(prefix):
            return what
    return None


def compile_regex(source: str) -> Regex:
    """Compile a `~REGEX` body for case-insensitive full matches on RE2.

    Bounds, checked before RE2 builds what the relay matches with (a server name has at
    most 253 characters, so none of them refuses a pattern that names hosts):

    - at most 16384 characters (the program budget below stops an alternation of names
      first, at some 500 names): RE2's parser and Python's (asked only for the message
      of a pattern RE2 refuses) stay cheap, and RE2 never logs to stderr about a walk
      past its budget (it does at about 1 MB);
    - groups nested at most 100 deep: Python's parser recurses, two frames a level,
      and overflows the stack past about 450 levels;
    - repetition counts of at most 1000, RE2's limit: RE2 refuses a larger count but
      reads one of ten digits or more (``a{99999999999}``) as the literal text
      ``{99999999999}``, which no name contains, so such a route would never match;
    - a program that fits RE2 in 128 KiB. The pattern is compiled a first time with that
      budget: compiling takes time with the program's size (``a{0,1000}`` thirty times,
      270 characters, takes 3 s with RE2's default 8 MiB and fails in 10 ms here; what
      fits compiles in under 0.1 s); ``.{0,253}`` fits in half of it. The pattern is
      then compiled again with RE2's default budget, so that matching has room for its
      DFA (within 128 KiB RE2 falls back to its NFA, some 100 times slower per name).

    Error handling: raises ValueError with a one-line reason: a bound above, Python's own
    message for a pattern that is not a regex at all, or the construct RE2 lacks
    (backreferences, lookaround, atomic groups, possessive quantifiers, conditionals,
    ``\\Z``...). Control characters are escaped and a long pattern is shortened in it.
    """
    max_len, max_depth, max_count, check_mem = 16384, 100, 1000, 128 << 10

    def one_line(text: str, most: int = 80) -> str:
        text = text if len(text) <= most else text[: most - 3] + "..."
        return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)

    shown = one_line(repr(source))
    if len(source) > 80:
        shown = f"{one_line(repr(source[:40]))}... ({len(source)} characters)"
    if len(source) > max_len:
        raise ValueError(f"regex {shown} is longer than {max_len} characters")
    if not source.isascii():
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"regex {shown} holds a lone surrogate (not a character)") from None
    # one pass over the pattern, skipping escapes, \Q...\E and classes: nesting, counts
    count = re.compile(r"\{([0-9]+)(?:,([0-9]*))?\}")  # RE2 reads "{,n}" as text
    depth = deepest = 0
    i = 0
    while i < len(source):
        c = source[i]
        if source.startswith("\\Q", i):  # a literal text up to \E (or the end)
            end = source.find("\\E", i + 2)
            i = len(source) if end < 0 else end + 2
            continue
        if c == "\\":
            i += 2
            continue
        if c == "[":  # a class: "]" first (or after "^") is a literal, [:alpha:] nests
            i += 2 if source[i + 1 : i + 2] == "^" else 1
            i += 1 if source[i : i + 1] == "]" else 0
            while i < len(source) and source[i] != "]":
                if source[i] == "\\":
                    i += 1
                elif source.startswith("[:", i) and ":]" in source[i + 2 :]:
                    i = source.index(":]", i + 2) + 1
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == "{" and (m := count.match(source, i)):
            big = [n for n in m.groups() if n and (len(n) > 4 or int(n) > max_count)]
            if big:
                raise ValueError(
                    f"regex {shown} repeats {big[0][:20]} times: RE2 allows at most {max_count}"
                )
        i += 1
    if deepest > max_depth:
        raise ValueError(f"regex {shown} nests groups {deepest} deep: at most {max_depth}")

    re2, options = _re2_module()
    small = re2.Options()
    for name in re2.Options.NAMES:
        setattr(small, name, getattr(options, name))
    small.max_mem = check_mem
    message = ""
    try:
        re2.compile(source, small)
        rx: Regex = re2.compile(source, options)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else ""
        message = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    else:
        return rx
    if message.startswith("pattern too large"):
        raise ValueError(
            f"regex {shown} is too large: its RE2 program does not fit in {check_mem >> 10}"
            " KiB (a pattern for host names needs far less: '.{0,253}' fits in half)"
        )
    try:
        re.compile(source)
    except re.error as exc:
        raise ValueError(f"invalid regex {shown}: {one_line(str(exc), 200)}") from None
    except (RecursionError, OverflowError):  # kept off by the bounds above; a net
        pass  # Python cannot parse it either: RE2's message says why
    why = "regex routes run on RE2 so that no name costs more than its length"
    what = _lacked(message, source)
    if what is None:
        raise ValueError(f"regex {shown} is refused by RE2: {one_line(message, 200)} ({why})")
    raise ValueError(
        f"regex {shown} uses {what}: RE2 has no backreferences, lookaround, atomic "
        f"groups, possessive quantifiers or conditionals ({why})"
    )


@dataclass(frozen=True, slots=True)
class NamePattern:
    """One compiled `server_names` entry.

    `kind` is "exact", "wildcard" or "regex". `value` is the normalised exact name, the
    wildcard's suffix without the leading "*." (``example.com``), or the regex source
    without its leading "~".
    """

    kind: str
    value: str
    regex: Regex | None = None

    def matches(self, name: str) -> bool:
        """Does the already-normalised `name` match this pattern?"""
        if self.kind == "exact":
            return name == self.value
        if self.kind == "wildcard":
            suffix = self.value
            return (
                len(name) > len(suffix) + 1
                and name.endswith(suffix)
                and (name[-len(suffix) - 1] == ".")
            )
        assert self.regex is not None
        return self.regex.fullmatch(name.encode("utf-8", "replace")) is not None


def compile_pattern(pattern: str) -> NamePattern:
    """Compile a `server_names` entry; raise ValueError with a one-line reason if bad."""
    if not pattern or not pattern.strip():
        raise ValueError("empty server name")
    if pattern.startswith("~"):
        source = pattern[1:]
        if not source:
            raise ValueError("invalid regex '': empty pattern after '~'")
        return NamePattern("regex", source, compile_regex(source))
    name = normalize_name(pattern)
    if name.startswith("*."):
        suffix = name[2:]
        if not suffix or "*" in suffix or suffix.startswith(".") or ".." in suffix:
            raise ValueError(
                f"invalid wildcard {pattern!r}: expected '*.' followed by a domain, "
                "e.g. '*.example.com'"
            )
        return NamePattern("wildcard", suffix)
    if "*" in name:
        raise ValueError(
            f"invalid wildcard {pattern!r}: '*' is only allowed as the whole first label, "
            "e.g. '*.example.com' (use '~REGEX' for anything else)"
        )
    if not name or name.startswith(".") or ".." in name:
        raise ValueError(f"invalid server name {pattern!r}")
    return NamePattern("exact", name)


def match_name(pattern: str, name: str) -> bool:
    """Does `name` match the `server_names` entry `pattern`? (Both are normalised here.)"""
    return compile_pattern(pattern).matches(normalize_name(name))
