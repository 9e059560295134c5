"""Import this module before ``torch`` anywhere in the daemon: it pins OpenMP to one thread.

The daemon runs torch on worker threads. If torch starts with more than one OpenMP
thread, the OpenMP pool created by the first forward pass on such a thread keeps a
thread spinning (busy-waiting for work) after the call returns, burning a CPU core
while the daemon is idle. ``torch.set_num_threads(1)`` alone is not enough: the
OpenMP runtime reads ``OMP_NUM_THREADS`` once, when torch's shared library is loaded,
so the variable has to be set before the first ``import torch``. ``setdefault`` keeps
a value the operator chose on purpose.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
