"""User-facing errors: one sentence that names the input and the problem, never a traceback."""


class GanimeError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line and exits 2."""

    exit_code = 2


class InputError(GanimeError):
    """A bad file, folder, image or argument."""


class CheckpointError(GanimeError):
    """A checkpoint that is missing, corrupt, foreign or of another method."""


class TrainingDiverged(GanimeError):
    """A NaN/Inf loss; the last good checkpoint is kept."""

    exit_code = 3
