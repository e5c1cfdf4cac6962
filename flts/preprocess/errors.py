"""The one refusal of preprocess: the dataset itself is unusable (→ 400, no retry)."""
from __future__ import annotations

from flts.events import EventError


class DataError(EventError):
    """The dataset itself is unusable; the message names the file, the column, the row, the value
    and the setting that fixes it, where there is one."""
