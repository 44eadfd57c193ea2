"""ranksearch: search which low-rank adapter, placed where, with how much rank, works best for a CLIP model.

Heavy dependencies (torch, open_clip, ray, mlflow) are imported lazily by the modules that need them, so
``ranksearch --help`` stays fast.
"""

__version__ = "0.1.0"

import os as _os

# ranksearch runs offline by design: no usage telemetry from the libraries it drives (users may override).
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
