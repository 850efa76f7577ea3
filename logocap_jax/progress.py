"""Progress of a loop: a bar on a terminal, plain log lines elsewhere.

On a terminal the loop gets a tqdm bar with its rate and ETA. Where the output is a file or a
pipe (a SLURM log, CI, `> train.log`), a bar's carriage-return redraws would pile up as
fragments, so the loop prints one plain line every `every` items instead, and one at the end:

  train: 150/200 step (75%), 2.41 step/s, ETA 00:20, loss=0.0123, examples/s=9.64

  with progress.Progress(images, total=len(images), unit="img", desc="images") as bar:
      for image in bar:
          ...
          bar.set_postfix(people=len(found))
"""

import sys
import time
from collections.abc import Iterable

import tqdm

# Plain lines per loop when the caller does not say how often, and how often when the loop's
# length is unknown too.
DEFAULT_LINES = 10
DEFAULT_EVERY = 100


class Progress:
    """Wraps an iterable and reports how far the loop over it got.

    An item counts as done when the loop asks for the next one, or leaves the `with` block
    without an error (a `break` after the item's work).
    """

    def __init__(
        self,
        iterable: Iterable,
        *,
        total: int | None = None,
        unit: str = "it",
        desc: str = "",
        initial: int = 0,
        every: int | None = None,
        enabled: bool = True,
        stream=None,
    ):
        """Args:
          iterable: the items.
          total: how many items the whole loop has (with `initial`: counting the ones done
            before); None: unknown (no percentage or ETA).
          unit: what an item is, for the rate ('step', 'img').
          desc: the loop's name, first on the bar and on each line.
          initial: items already done before this iterable's first (a resumed run).
          every: a plain line after every `every`-th item (counted from 0, so the lines fall on
            multiples of it); default: about DEFAULT_LINES lines over `total`, or DEFAULT_EVERY
            without a total.
          enabled: False reports nothing.
          stream: where to write; default sys.stderr. A bar if it is a terminal (`isatty`),
            plain lines otherwise.

        Raises:
          ValueError: `every` is below 1.
        """
        if every is not None and every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self._iterable = iterable
        self.total, self.unit, self.desc = total, unit, desc
        self.count = initial
        self._stream = sys.stderr if stream is None else stream
        self._postfix = {}
        self._pending = False
        self._bar = None
        self._lines = False
        if enabled and self._stream.isatty():
            self._bar = tqdm.tqdm(
                total=total,
                initial=initial,
                unit=unit,
                desc=desc,
                file=self._stream,
                dynamic_ncols=True,
            )
        elif enabled:
            self._lines = True
            self._every = every or default_every(total)
            self._last_count, self._last_time = initial, time.perf_counter()
            self._printed = initial

    def __iter__(self):
        for item in self._iterable:
            self._pending = True
            yield item
            self._pending = False
            self.advance()
        self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None and self._pending:
            self._pending = False
            self.advance()
        self.close()

    def advance(self, n: int = 1) -> None:
        """Counts `n` more items done (for loops that do not iterate over the wrapper)."""
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and self.count % self._every == 0:
            self._print_line()

    def set_postfix(self, **values) -> None:
        """Shows these values after the rate (on the bar now, on the next plain line); floats
        with four significant digits."""
        self._postfix.update(
            {
                key: f"{value:.4g}" if isinstance(value, float) else value
                for key, value in values.items()
            }
        )
        if self._bar is not None:
            self._bar.set_postfix(self._postfix)

    def close(self) -> None:
        """Ends the bar, or prints the last plain line if the count moved since the previous one.
        Calling it again does nothing."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines and self.count != self._printed:
            self._print_line()
        self._lines = False

    def _print_line(self) -> None:
        now = time.perf_counter()
        done, seconds = self.count - self._last_count, now - self._last_time
        # The rate since the previous line: the current speed, not the average since a start
        # that included compiling.
        rate = done / seconds if seconds > 0 and done > 0 else None
        parts = [f"{self.count}/{self.total} {self.unit}" if self.total else f"{self.count}"]
        if self.total:
            parts[0] += f" ({100 * self.count / self.total:.0f}%)"
        if rate is not None:
            parts.append(format_rate(rate, self.unit))
            if self.total and self.count < self.total:
                eta = tqdm.tqdm.format_interval((self.total - self.count) / rate)
                parts.append(f"ETA {eta}")
        parts += [f"{key}={value}" for key, value in self._postfix.items()]
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + ", ".join(parts), file=self._stream, flush=True)
        self._last_count, self._last_time, self._printed = self.count, now, self.count


def default_every(total: int | None) -> int:
    """Items between plain lines: about DEFAULT_LINES lines over `total` items."""
    if not total:
        return DEFAULT_EVERY
    return max(1, -(-total // DEFAULT_LINES))


def format_rate(rate: float, unit: str) -> str:
    """'2.41 step/s', '1234 img/s', or '3.2 s/step' below one item per second."""
    value, text = (rate, f"{unit}/s") if rate >= 1 else (1 / rate, f"s/{unit}")
    return f"{value:.0f} {text}" if value >= 100 else f"{value:.3g} {text}"
