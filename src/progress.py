"""Progress bars: a widget in Jupyter, a text line elsewhere, and a loader wrapped in one opened once.

``tqdm.auto`` adds tqdm's asyncio class, which calls ``iter()`` on the iterable as the bar is made: for a
``DataLoader``, a second set of worker processes that decodes a few batches for nothing and draws from the loader's
random generator. In a Jupyter kernel, tearing those workers down can take 10 s a loop (a known tqdm bug).
``tqdm.autonotebook`` chooses between the same two bars without it.
"""

from __future__ import annotations

import warnings

from tqdm.std import TqdmExperimentalWarning

with warnings.catch_warnings():  # its notice that it chose the widget, which tqdm.auto silences too
    warnings.simplefilter("ignore", TqdmExperimentalWarning)
    from tqdm.autonotebook import tqdm

__all__ = ["tqdm"]
