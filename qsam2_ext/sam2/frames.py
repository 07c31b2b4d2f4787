"""Video frames read one at a time, for SAM2's video predictor: from a folder of images or a video file.

``open_frames(path, image_size)`` gives a sequence whose item ``t`` is frame ``t`` as SAM2's own loader makes it
(``sam2.utils.misc.load_video_frames``: RGB, resized to ``image_size`` square by PIL, ``/ 255``, normalised with the
ImageNet mean and std; float32 ``(3, S, S)``, bit for bit), read from disk when asked and never kept: a long video
costs the memory of one frame. A folder holds image files (any of ``IMAGE_EXTENSIONS``), ordered by the numbers in
their names (``frame_2`` before ``frame_10``); a video file is decoded with PyAV (``pip install av``), forward, so
reading frames in order decodes each once.

Every problem is a ``FrameError`` (a ``ValueError``) naming the file: an empty folder, an unreadable frame, a frame
whose size differs from the first one's, an index past the end.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np
import torch

from .data.files import IMAGE_EXTENSIONS

IMG_MEAN = (0.485, 0.456, 0.406)  # sam2's load_video_frames defaults
IMG_STD = (0.229, 0.224, 0.225)
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


class FrameError(ValueError):
    """A video or frame that cannot be used (one line: the file and what is wrong)."""


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def to_model_input(image, image_size: int) -> torch.Tensor:
    """A PIL image as SAM2's video loader prepares it: float32 ``(3, S, S)``, normalised."""
    pixels = np.array(image.convert("RGB").resize((image_size, image_size))) / 255.0  # float64, as sam2 does
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float()
    mean = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
    return (tensor - mean) / std


class _Frames:
    """Shared checks: the index range and one frame size for the whole video."""

    def __init__(self, source: str, image_size: int, count: int):
        self.source, self.image_size, self._count = source, image_size, count
        self.video_width, self.video_height = self.size_of(0)

    def __len__(self) -> int:
        return self._count

    def _index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"frame indices are integers, got {type(index).__name__}")
        if not 0 <= index < self._count:
            raise FrameError(f"{self.source}: frame {index} is past the end (the video has {self._count} frames, "
                             f"0..{self._count - 1})")
        return int(index)

    def _checked(self, image, index: int, where: str):
        if (image.width, image.height) != (self.video_width, self.video_height):
            raise FrameError(f"{where}: frame {index} is {image.width}x{image.height}, frame 0 is "
                             f"{self.video_width}x{self.video_height} (all frames must have one size)")
        return image

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_model_input(self.image(index), self.image_size)

    def array(self, index: int) -> np.ndarray:
        """Frame ``index`` as ``(H, W, 3)`` uint8 RGB at its own size."""
        return np.array(self.image(index).convert("RGB"))


class FolderFrames(_Frames):
    """Image files of a folder, in the natural order of their names."""

    def __init__(self, folder: str, image_size: int):
        if not os.path.isdir(folder):
            raise FrameError(f"{folder}: not a folder")
        names = sorted((n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)
                        and not n.startswith(".")), key=_natural_key)
        if not names:
            raise FrameError(f"{folder}: no frames (image files {', '.join(IMAGE_EXTENSIONS)}) in the folder")
        self.paths = [os.path.join(folder, n) for n in names]
        super().__init__(folder, image_size, len(names))

    def _open(self, index: int):
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                image.load()
                return image.copy()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise FrameError(f"{path}: unreadable frame {index} ({type(e).__name__}: {e})") from None

    def size_of(self, index: int) -> tuple[int, int]:
        return self._open(index).size

    def image(self, index: int):
        index = self._index(index)
        return self._checked(self._open(index), index, self.paths[index])

    def name(self, index: int) -> str:
        return os.path.basename(self.paths[index])


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError("reading video files needs PyAV: pip install av (or extract the frames into a folder)") \
            from e
    return av


class VideoFrames(_Frames):
    """Frames of a video file, decoded forward; reading an earlier frame than the last one restarts decoding."""

    def __init__(self, path: str, image_size: int):
        if not os.path.isfile(path):
            raise FrameError(f"{path}: no such video file")
        self.path = path
        av = _av()
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                count = sum(1 for packet in container.demux(stream) if packet.size)  # one packet per frame
        except (av.FFmpegError, IndexError, OSError) as e:
            raise FrameError(f"{path}: unreadable video ({type(e).__name__}: {e})") from None
        if count == 0:
            raise FrameError(f"{path}: the video has no frames")
        self._container = self._decoder = None
        self._next = 0
        super().__init__(path, image_size, count)

    def _restart(self) -> None:
        self.close()
        av = _av()
        self._container = av.open(self.path)
        self._decoder = self._container.decode(video=0)
        self._next = 0

    def _decode(self, index: int):
        av = _av()
        if self._decoder is None or index < self._next:
            self._restart()
        try:
            while True:
                frame = next(self._decoder)
                self._next += 1
                if self._next - 1 == index:
                    return frame.to_image()
        except StopIteration:
            raise FrameError(f"{self.path}: the video ended after {self._next} frames, before frame {index} "
                             f"(its container lists {self._count})") from None
        except (av.FFmpegError, OSError) as e:
            raise FrameError(f"{self.path}: unreadable frame {index} ({type(e).__name__}: {e})") from None

    def size_of(self, index: int) -> tuple[int, int]:
        return self._decode(index).size

    def image(self, index: int):
        index = self._index(index)
        return self._checked(self._decode(index), index, self.path)

    def name(self, index: int) -> str:
        return f"{os.path.basename(self.path)}#{index}"

    def close(self) -> None:
        if getattr(self, "_container", None) is not None:
            self._container.close()
        self._container = self._decoder = None

    def __del__(self):
        self.close()


def open_frames(path: str, image_size: int, kind: Optional[str] = None) -> _Frames:
    """The frames of a folder or a video file (``kind``: "folder" or "video"; default: by the path)."""
    kind = kind or ("folder" if os.path.isdir(path) else "video" if path.lower().endswith(VIDEO_EXTENSIONS)
                    else None)
    if kind == "folder":
        return FolderFrames(path, image_size)
    if kind == "video":
        return VideoFrames(path, image_size)
    if not os.path.exists(path):
        raise FrameError(f"{path}: no such folder or video file")
    raise FrameError(f"{path}: neither a folder of frames nor a video file ({', '.join(VIDEO_EXTENSIONS)})")
