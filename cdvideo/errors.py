"""The exception hierarchy. The CLI prints `str(error)` as one line for any CdVideoError.

Specific errors also subclass ValueError or OSError (as peft does), so callers that catch
the built-in kinds keep working.
"""


class CdVideoError(Exception):
    """Base class of every error cdvideo raises on purpose."""


class ConfigError(CdVideoError, ValueError):
    """A setting, flag or YAML key is invalid."""


class ConceptFileError(CdVideoError, ValueError):
    """A concept file is corrupt, truncated, of an unknown format or internally inconsistent."""


class InjectionError(CdVideoError, ValueError):
    """A concept does not fit the model it is applied to (shapes, names, tokens)."""


class ModelNotAvailableError(CdVideoError, OSError):
    """A model's weights are neither local nor downloadable (offline, missing path)."""


class InputFileError(CdVideoError, OSError):
    """An input file is missing or unreadable."""


class VideoIOError(CdVideoError, OSError):
    """A video could not be written or read."""


class UnsafeFileError(CdVideoError, ValueError):
    """A pickle file needs code to load; cdvideo only reads plain tensors (design decision 3)."""


class WrongFileKindError(CdVideoError, ValueError):
    """A file is of another kind than the one asked for (a LoRA given as a concept, ...)."""


class OutputLockedError(CdVideoError, OSError):
    """Another process is writing to the same output folder (a second `cdvideo batch`)."""


class UnsafeOutputError(CdVideoError, FileExistsError):
    """An output path names something cdvideo did not write (a user's folder, a device): it is never replaced."""
