"""Errors a build reports to the user as one line (the CLI maps them to exit codes)."""


class BuildError(RuntimeError):
    """The build cannot go on (nothing accepted, a backend down, a contract broken): rerun after fixing it."""
