"""Errors the command line turns into one clear line and an exit code.

Raise `BadInput` for anything the user can fix (bad file, bad option, bad config):
exit code 2. Raise `WorkFailed` for a failure during otherwise valid work (e.g. a
NaN loss): exit code 1. The message is one line: what, where, how to fix.
"""

from __future__ import annotations


class DsrsdError(Exception):
    exit_code = 1


class BadInput(DsrsdError):
    """The user's input (files, options, config, run folder) is wrong. Exit code 2."""

    exit_code = 2


class WorkFailed(DsrsdError):
    """Valid input, but the work itself failed. Exit code 1."""

    exit_code = 1
