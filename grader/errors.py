"""The one way the grader fails: every error carries the exit code the CLI must use."""


class TunegradeError(Exception):
    """Base error; ``exit_code`` is what the CLI returns for it."""

    exit_code = 1


class BadInput(TunegradeError):
    """The user's input is wrong: missing file, hostile archive, unknown task, invalid YAML."""

    exit_code = 2


class GraderFault(TunegradeError):
    """The grader or its infrastructure failed; never the candidate's fault."""

    exit_code = 1
