"""User-facing errors: one line that names the file and the cause."""

from __future__ import annotations

from pathlib import Path


class MambamilError(Exception):
    """An error caused by the user's input; the CLI prints it as one line, no traceback."""


class SlideError(MambamilError):
    """A slide could not be opened, read or processed."""

    def __init__(self, slide: str | Path, cause: str, slide_id: str | None = None) -> None:
        self.slide = str(slide)
        self.slide_id = slide_id
        self.cause = cause
        name = f"slide '{slide_id}' ({slide})" if slide_id else f"slide {slide}"
        super().__init__(f"{name}: {cause}")


class ConfigError(MambamilError):
    """The config file or one of the input sheets is invalid."""


class InputFileError(MambamilError):
    """An input file (coords, features, sheet, checkpoint) is missing or malformed."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{path}: {cause}")


class CheckpointError(InputFileError, ValueError):
    """A model checkpoint is missing, unreadable, or lacks what is needed to rebuild its model."""
