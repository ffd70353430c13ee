"""The one base class of every error asru_lab raises for a person to read.

The CLI catches `AsruLabError` and prints its message on one line (exit code 2); anything else
is a bug and keeps its traceback.
"""


class AsruLabError(Exception):
    """Bad input or a failed run, with a message that says what was wrong and what to do."""
