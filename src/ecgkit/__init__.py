"""ecgkit: heartbeat classification from ECG records, with a plugin-style CLI.

Public entry points::

    import ecgkit
    ecgkit.hookimpl                       # marker for plugin hook implementations
    ecgkit.list_components("segmenters")  # registered names
    ecgkit.create("segmenters", "pan-tompkins")  # build a component by name
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@ecgkit.hookimpl def register_segmenters(): ...``
hookimpl = pluggy.HookimplMarker("ecgkit")

from .errors import EcgkitError  # noqa: E402
from .registry import create, list_components  # noqa: E402

__all__ = ["EcgkitError", "__version__", "create", "hookimpl", "list_components"]
