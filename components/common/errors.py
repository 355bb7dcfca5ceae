"""The failures a user can fix, as one family of exceptions.

An :class:`ExpectedError` is a failure whose message already says everything a person needs:
which file, line, row, field or URI is wrong and, where it helps, what to do. The stage CLIs and
``sidreasoner`` print such a message as one line and exit non-zero without a traceback (``--debug``
shows it); anything else is a bug and keeps its traceback.

* :class:`InputError`: an input artifact or file breaks its contract, is missing, or does not
  belong with the other inputs (e.g. a sid_map of another quantization run);
* ``ConfigError`` (:mod:`components.common.config`): a profile, ``--set`` override or section is
  invalid;
* ``StorageError`` (:mod:`components.common.storage`): an artifact could not be read or written
  at its URI.
"""

from __future__ import annotations


class ExpectedError(Exception):
    """A failure whose message names what is wrong; reported without a traceback."""

    #: Process exit status of a CLI that stops on this error.
    exit_code = 1


class InputError(ExpectedError, ValueError):
    """An input breaks its contract; the message names the artifact or file and the row,
    line or field."""
