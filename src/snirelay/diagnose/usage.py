"""The argument parser of the diagnose commands (check, explain, hello): a usage error is
raised as `Usage` for the command to print as one line and exit 2, where argparse would
print its usage text and exit by itself."""

from __future__ import annotations

import argparse
from typing import NoReturn


class Usage(Exception):
    """A usage error: its message is the line printed after the command's name."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Usage(message)
