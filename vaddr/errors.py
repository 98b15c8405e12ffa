"""The one error type the library raises: a message and the fix."""


class VaddrError(Exception):
    """A problem the user can act on. The CLI prints `message` and `hint` on one line."""

    def __init__(self, message, hint=None, exit_code=1):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self):
        return f"{self.message} ({self.hint})" if self.hint else self.message
