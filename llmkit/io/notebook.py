"""Progress in a Jupyter notebook: one HTML bar updated in place.

A notebook's output is not a terminal (`plain_output()` is true there), so tqdm's text bar
would be carriage returns piling up in the saved .ipynb, and tqdm's widget bar needs
ipywidgets, which llmkit does not install. IPython, present in every kernel, can replace a
displayed HTML element in place (`display(..., display_id=True)` then `update`): that is the
bar here, with the step count, elapsed time and an ETA; log lines print below it as usual.
"""

from __future__ import annotations

import sys
import time
from html import escape
from typing import Any


def in_notebook() -> bool:
    """True inside a Jupyter kernel (ipykernel's shell), whatever the frontend."""
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class HtmlBar:
    """tqdm's interface as ProgressCallback uses it (update, write, close), drawn as an HTML
    <progress> element. Redrawn at most every 0.2 s: a kernel message per step would cost more
    than a tiny model's step (~0.1 s here)."""

    def __init__(self, total: int, label: str = "training") -> None:
        from IPython.display import HTML, display

        self.total, self.label, self.n = max(total, 0), label, 0
        self.started = self.drawn = time.perf_counter()
        self._html = HTML
        self.handle: Any = display(HTML(self.render()), display_id=True)

    def render(self) -> str:
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.n * (self.total - self.n) if 0 < self.n < self.total else 0.0
        text = f"{self.label}: step {self.n}/{self.total} | {elapsed:.0f}s"
        if eta:
            text += f" | ~{eta:.0f}s left"
        return (
            f'<progress value="{self.n}" max="{self.total or 1}" style="width:40ch"></progress>'
            f" <code>{escape(text)}</code>"
        )

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.drawn >= 0.2 or self.n >= self.total:
            self.drawn = now
            self.handle.update(self._html(self.render()))

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        self.handle.update(self._html(self.render()))
