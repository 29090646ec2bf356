"""Errors that the CLI reports as a message (no traceback) and an exit code."""


class SwiftpipeError(Exception):
    """A problem the user can fix; `str(err)` says what and how."""

    exit_code = 1


class RecipeError(SwiftpipeError):
    """The recipe or an override is invalid (exit code 2, like a usage error)."""

    exit_code = 2


class StageFailed(SwiftpipeError):
    """A child process of a pipeline stage exited non-zero."""

    def __init__(self, stage: str, returncode: int, log_path, log_tail: str):
        self.stage, self.returncode, self.log_path = stage, returncode, log_path
        super().__init__(
            f"stage '{stage}' failed (exit code {returncode}); full log: {log_path}\n"
            f"--- last lines of the log ---\n{log_tail}\n---"
        )
