"""Progress of a loop: a live widget in Jupyter that leaves one final line, a plain bar on a terminal.

In a notebook the widget is displayed under a display id and, when the loop ends, that display
is replaced by a single line ("mrpc-FT-seed0: 4/4 steps in 16.2 s, loss 0.680"). JupyterLab
shows the live widget and then the line; a notebook executed headless (papermill, nbconvert)
keeps only the line, because the executor applies display updates to the saved output. Nothing
goes to stderr in a notebook. Elsewhere (terminal, tests) it is a tqdm bar on stderr that
clears itself when done.
"""

from __future__ import annotations

import time
from typing import Any


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where outputs are displays), False in a terminal or a plain script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _widget_bar(total: int, desc: str, mininterval: float) -> tuple[Any, Any]:
    """A tqdm notebook bar displayed under a display id; (None, handle) when ipywidgets is missing."""
    from IPython.display import display

    try:
        from tqdm.notebook import tqdm as notebook_tqdm

        bar = notebook_tqdm(total=total, desc=desc, leave=False, mininterval=mininterval, display=False)
    except ImportError:  # no ipywidgets: no live bar, the final line still comes
        return None, display({"text/plain": f"{desc}: running ({total} steps)"}, raw=True, display_id=True)
    return bar, display(bar.container, display_id=True)


class Progress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` for a loop of ``total`` steps (see the module doc)."""

    def __init__(self, total: int, desc: str, unit: str = "steps", mininterval: float = 2.0,
                 notebook: bool | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._handle = None
        if in_notebook() if notebook is None else notebook:
            self._bar, self._handle = _widget_bar(total, desc, mininterval)
        else:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, leave=False, mininterval=mininterval)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix.update(values)
        if self._bar is not None:
            self._bar.set_postfix(refresh=refresh, **values)

    def summary(self) -> str:
        """The final line: steps done, wall time, and the last postfix values."""
        line = f"{self.desc}: {self.n}/{self.total} {self.unit} in {time.perf_counter() - self._start:.1f} s"
        return line + "".join(f", {k} {v}" for k, v in self.postfix.items())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._handle is not None:
            self._handle.update({"text/plain": self.summary()}, raw=True)
            self._handle = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
