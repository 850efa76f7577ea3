"""TensorBoard event files without TensorFlow: scalars, images and text, and trimming a run's
files back to the step it resumes from.

The records are TensorBoard's: `tensorboard.compat.proto` events written by the `tensorboard`
package's own `RecordWriter` (the TFRecord framing), into a plain Python file. The package's
`EventFileWriter` is not used because it opens files through `tensorboard.compat.tf`, which
imports TensorFlow whenever it is installed (design §2.2).

A resumed run must not show a step twice: events written after the last checkpoint by a run
that then died would come back when the resumed run logs those steps again. `EventWriter`
therefore first rewrites the directory's files without the summaries above the restored step
(`trim`), then appends a new file.
"""

import os
import socket
import struct
import time

import cv2
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.record_writer import RecordWriter

FILE_MARKER = "tfevents"
_FILE_PREFIX = "events.out.tfevents."
_HEADER = struct.Struct("<QI")  # data length, masked CRC of the length
_FOOTER = struct.Struct("<I")  # masked CRC of the data


def event_file_paths(logdir: str) -> list[str]:
    """The event files in `logdir`, in the order TensorBoard reads them (by name)."""
    if not os.path.isdir(logdir):
        return []
    names = sorted(name for name in os.listdir(logdir) if FILE_MARKER in name)
    return [os.path.join(logdir, name) for name in names]


def read_records(path: str) -> tuple[list[bytes], bool]:
    """The records of an event file, up to the first incomplete or damaged one.

    Returns:
      (the records' data, whether the file ended cleanly after the last of them). A run killed
      while writing leaves a partial last record; it is left out.
    """
    with open(path, "rb") as f:
        data = f.read()
    records, offset = [], 0
    while offset < len(data):
        end = offset + _HEADER.size
        if end > len(data):
            return records, False
        length, length_crc = _HEADER.unpack_from(data, offset)
        if masked_crc32c(data[offset : offset + 8]) != length_crc:
            return records, False
        stop = end + length + _FOOTER.size
        if stop > len(data):
            return records, False
        record = data[end : end + length]
        if masked_crc32c(record) != _FOOTER.unpack_from(data, end + length)[0]:
            return records, False
        records.append(record)
        offset = stop
    return records, True


def read_events(path: str) -> list[event_pb2.Event]:
    """The complete events of an event file, in file order."""
    return [event_pb2.Event.FromString(record) for record in read_records(path)[0]]


def trim(logdir: str, last_step: int | None) -> None:
    """Removes from the event files in `logdir` every summary at a step above `last_step`.

    Files that keep no summary are deleted, the others rewritten in place (written aside, then
    renamed over the file) unless nothing changes.

    Args:
      logdir: the event files' directory.
      last_step: the last step to keep; None keeps none (a run that starts from scratch).
    """
    for path in event_file_paths(logdir):
        records, intact = read_records(path)
        kept = [
            (record, event)
            for record, event in ((r, event_pb2.Event.FromString(r)) for r in records)
            if not event.HasField("summary") or (last_step is not None and event.step <= last_step)
        ]
        if not any(event.HasField("summary") for _, event in kept):
            os.remove(path)
        elif len(kept) < len(records) or not intact:
            aside = path + ".trimmed"
            with open(aside, "wb") as f:
                writer = RecordWriter(f)
                for record, _ in kept:
                    writer.write(record)
            os.replace(aside, path)


def _file_name(logdir: str) -> str:
    """A new event file's name, sorting after the directory's existing files: TensorBoard
    reads a run's files in name order, which starts with the creation time in seconds."""
    stamps = [
        int(stamp)
        for path in event_file_paths(logdir)
        if (stamp := os.path.basename(path).removeprefix(_FILE_PREFIX).split(".")[0]).isdigit()
    ]
    stamp = max([int(time.time()), *(s + 1 for s in stamps)])
    return os.path.join(logdir, f"{_FILE_PREFIX}{stamp:010d}.{socket.gethostname()}.{os.getpid()}")


class EventWriter:
    """Appends scalars, images and text to a new event file in a directory.

    Each call writes its events and flushes them, so TensorBoard shows them at once and a run
    that dies loses nothing it wrote.
    """

    def __init__(self, logdir: str, *, last_step: int | None):
        """Trims the directory's event files to `last_step` (see `trim`), then opens a new one.

        Args:
          logdir: the directory (created if missing).
          last_step: the step the run resumes after (the restored checkpoint's); None for a
            run that starts from scratch.
        """
        os.makedirs(logdir, exist_ok=True)
        trim(logdir, last_step)
        self.path = _file_name(logdir)
        self._file = open(self.path, "wb")
        self._records = RecordWriter(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One scalar per tag (`{tag: value}`) at `step`."""
        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                for tag, value in values.items()
            ]
        )
        self._write(_event(step, summary))

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """RGB uint8 images [h, w, 3] (`{tag: image}`) at `step`, as PNG."""
        values = []
        for tag, image in images.items():
            ok, png = cv2.imencode(".png", cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))
            if not ok:
                raise ValueError(f"cv2 could not encode the image of {tag} as PNG")
            height, width = image.shape[:2]
            encoded = summary_pb2.Summary.Image(
                height=height, width=width, colorspace=3, encoded_image_string=png.tobytes()
            )
            values.append(summary_pb2.Summary.Value(tag=tag, image=encoded))
        self._write(_event(step, summary_pb2.Summary(value=values)))

    def text(self, step: int, tag: str, markdown: str) -> None:
        """A text (rendered as Markdown by TensorBoard's text dashboard) at `step`."""
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[markdown.encode()])
        metadata = text_metadata.create_summary_metadata(display_name=tag, description="")
        value = summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)
        self._write(_event(step, summary_pb2.Summary(value=[value])))

    def close(self) -> None:
        self._file.close()

    def _write(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()


def _event(step: int, summary: summary_pb2.Summary) -> event_pb2.Event:
    return event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
