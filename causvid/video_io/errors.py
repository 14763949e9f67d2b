"""The one-line errors of video and image I/O (each a ValueError or RuntimeError naming the file)."""


class VideoReadError(ValueError):
    """A file can't be read as a video (missing, not a video, truncated, corrupt)."""


class VideoWriteError(RuntimeError):
    """ffmpeg failed while encoding a video."""


class ImageReadError(ValueError):
    """A file can't be read as an image, or the requested crop doesn't fit it."""


class CropInfoError(ValueError):
    """A crop-info JSON file is unreadable or has invalid / missing fields."""
