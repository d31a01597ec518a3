"""`--devices N`: relaunch this same command on N processes with torchrun.

The parent validates the recipe, then re-executes `python -m llmkit <same args>` under
`torch.distributed.run`; the children see WORLD_SIZE and run normally. On CPU the ranks talk
over gloo and share the cores: each gets cores // N threads (torchrun would default to 1).
`accelerate launch -m llmkit pretrain ...` works too, for multi-node or DeepSpeed/FSDP configs.
"""

from __future__ import annotations

import os
import subprocess
import sys


def in_distributed_run() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch_if_needed(devices: int) -> bool:
    """True if this process launched the workers (and they have finished)."""
    if devices <= 1 or in_distributed_run():
        return False
    env = dict(os.environ)
    threads = max(1, (os.cpu_count() or 1) // devices)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={devices}",
        "-m",
        "llmkit",
        *sys.argv[1:],
    ]
    print(f"launching {devices} processes: {' '.join(cmd[2:])}", flush=True)
    code = subprocess.call(cmd, env=env)
    if code:
        sys.exit(code)
    return True
