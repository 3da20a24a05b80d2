"""How a network option is declared: `option()` (a dataclass field with metadata) and `Flag`.

How it works
------------
`NetworkConfig` (config/model.py) is the one table of network options: each field is
written once, as ``name: type = option(default, doc, flag=..., ...)``. The field gives
the name, the type (``bool``, ``int`` or ``float`` seconds) and the default; `option()`
stores the rest as a `Spec` in the field's metadata: the line for the config reference,
the command-line flag, the range, and whether the option is snirelay's own rather than
realm's. `config.network` reads these specs back and makes from them the loader's
reading of ``[network]`` at every level, the argparse flags and the reference table.

`option()` returns the `dataclasses.field`, which the type checker sees as a value of
the default's type, so mypy still checks that the default fits the annotation. This
module imports nothing from the rest of the package (the model imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

SPEC = "snirelay.option"  # the key of the Spec in a field's metadata

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Flag:
    """A command-line flag: its names (realm's, e.g. ``("-u", "--udp")``), and how it is
    given.

    `switch`: the flag takes no value and means true (realm's ``-u``, ``-t``, ``-6``,
    ``-m``); otherwise it takes a value (BOOL, N or S by the option's type, or
    `metavar`). One `Flag` object given to two options sets both (``-m``).
    `help`: the --help text; by default the option's doc line."""

    names: tuple[str, ...]
    switch: bool = False
    metavar: str | None = None
    help: str | None = None

    def __post_init__(self) -> None:
        if not self.names or not all(n.startswith("-") for n in self.names):
            raise ValueError(f"flag names must start with '-': {self.names!r}")

    @property
    def dest(self) -> str:
        """The argparse destination: the long name without dashes ("--tcp-timeout" ->
        "tcp_timeout")."""
        long = [n for n in self.names if n.startswith("--")] or list(self.names)
        return long[0].lstrip("-").replace("-", "_")

    @property
    def display(self) -> str:
        """How errors name the flag: "--send-proxy-version", "-u/--udp"."""
        return "/".join(self.names)


@dataclass(frozen=True, slots=True)
class Spec:
    """What `option()` records besides the field's name, type and default."""

    doc: str  # the meaning, one line of markdown, for docs/reference/config.md
    flag: Flag | None = None  # None: config files only
    minimum: int = 0  # integers: the smallest value allowed
    maximum: int | None = None  # integers: the largest value allowed
    positive: bool = False  # seconds: 0 is not allowed
    snirelay: bool = False  # snirelay's own option, not realm's


def option(
    default: T,
    doc: str,
    *,
    flag: Flag | None = None,
    minimum: int = 0,
    maximum: int | None = None,
    positive: bool = False,
    snirelay: bool = False,
) -> T:
    """A `NetworkConfig` field: `default` plus the option's `Spec` (see the module
    docstring)."""
    spec = Spec(doc, flag, minimum, maximum, positive, snirelay)
    # typeshed types field(default=x) as x's type, so mypy checks it against the field
    return field(default=default, metadata={SPEC: spec})
