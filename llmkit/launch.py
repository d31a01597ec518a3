"""`--devices N`: relaunch this same command on N processes with torchrun.

The parent has validated the recipe; the children see WORLD_SIZE and run normally. On CPU the
ranks talk over gloo and share the cores: each gets cores // N threads (torchrun would default
to 1). `accelerate launch -m llmkit pretrain ...` works too, for multi-node or DeepSpeed/FSDP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from llmkit.io.interrupt import EXIT_CODES
from llmkit.train.arguments import in_distributed_run


def relaunch_if_needed(devices: int) -> bool:
    """True if this process launched the workers (and they have finished)."""
    if devices <= 1 or in_distributed_run():
        return False
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={devices}", "-m", "llmkit", *sys.argv[1:]]
    print(f"launching {devices} processes: {' '.join(cmd[2:])}", flush=True)
    # torchrun runs in its own session, so a terminal's Ctrl-C reaches only us; we forward
    # each signal exactly once, torchrun passes it to every worker, and the workers agree
    # on a step, save and exit (see llmkit.train.interrupt).
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if not received:
            received.append(signum)
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in EXIT_CODES}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        sys.exit(EXIT_CODES[signal.Signals(received[0])])
    if code:
        sys.exit(code)
    return True
