"""The one-line errors of video and image I/O (each naming the file): bad input (UsageError, exit 2) or a
failed encode (RunError, exit 1)."""
from causvid.errors import RunError, UsageError


class VideoReadError(UsageError):
    """A file can't be read as a video (missing, not a video, truncated, corrupt)."""


class VideoWriteError(RunError):
    """ffmpeg failed while encoding a video."""


class ImageReadError(UsageError):
    """A file can't be read as an image, or the requested crop doesn't fit it."""


class CropInfoError(UsageError):
    """A crop-info JSON file is unreadable or has invalid / missing fields."""
