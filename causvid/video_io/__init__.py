"""Video and image I/O for the inference CLIs: names (`names`), uint8 frames (`frames`), the ffmpeg
binary (`ffmpeg`), the writer (`writer`) and reader (`reader`), images and crops (`images`), and the I2V crop
schema (`crop_info`).

Everything here runs on the ffmpeg binary shipped with ``imageio-ffmpeg`` (no
system ffmpeg, no Pillow/OpenCV/torchvision.io needed; ``imageio`` reads the
images).

Writing (:class:`VideoWriter`, :func:`write_video`)
    H.264 (libx264), ``yuv420p``, in an MP4 container, ``-crf 18`` by default.
    Frames are piped to one ffmpeg process as they come (block by block, as the
    blocks of a streaming rollout finish).  No resizing happens (the
    ``macro_block_size=1`` behaviour of imageio): ``yuv420p`` needs an even width
    and height, so odd sizes are refused with a ``ValueError`` before ffmpeg is
    started.

    The video is written to ``path + ".partial"`` (``out.mp4.partial``; the MP4
    muxer is chosen explicitly with ``-f mp4`` since the name does not end in
    ``.mp4``, and a ``*.mp4`` glob, e.g. a "skip videos already done" check,
    never sees a half-written file).  On a successful close the file is fsynced
    and renamed onto ``path`` with ``os.replace`` (atomic on one file system;
    an existing ``path`` is replaced).  On an exception inside the ``with``
    block, on ``abort()``, or when ffmpeg fails, ffmpeg is killed, the partial
    file is deleted and ``path`` is left untouched.  ``-movflags +faststart`` is
    deliberately *not* used: with the index (``moov``) at the end of the file a
    truncated copy can't be opened at all, so it is detected as corrupt.

Reading (:func:`read_video`, :func:`video_info`)
    Any problem (missing file, not a video, truncated, decode errors) is a
    one-line :class:`VideoReadError` (a ``ValueError``) naming the file.
"""
import importlib

#: name -> the submodule that defines it; imported on first use, so that a command line can read a crop file or
#: probe a video (no torch) before torch loads.
_WHERE = {"read_crop_info": "crop_info", "CropInfoError": "errors", "ImageReadError": "errors",
          "VideoReadError": "errors", "VideoWriteError": "errors", "to_uint8_frames": "frames",
          "load_image": "images", "resize_center_crop": "images", "safe_filename": "names", "read_video": "reader",
          "video_info": "reader", "VideoWriter": "writer", "write_video": "writer"}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "VideoReadError",
    "VideoWriteError",
    "ImageReadError",
    "CropInfoError",
    "safe_filename",
    "to_uint8_frames",
    "VideoWriter",
    "write_video",
    "read_video",
    "video_info",
    "load_image",
    "resize_center_crop",
    "read_crop_info",
]
