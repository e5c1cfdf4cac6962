"""Failures a training run announces as a FAILED event with their message as is."""


class TrainError(Exception):
    """Expected failure with a message that names the problem."""


class TrainDataError(TrainError, ValueError):
    """The claimed data cannot be trained on."""


class TrainingError(TrainError, RuntimeError):
    """Training or export produced something unusable."""
