"""`--devices N` (and `--nodes M`): relaunch this same command on N processes per machine
with torchrun.

The parent has validated the recipe; the children see WORLD_SIZE and run normally. On CPU the
ranks talk over gloo and share the cores: each gets cores // N threads (torchrun would default
to 1). With several nodes the same command runs on each machine with its `--node-rank`; they
meet at node 0's `--master-addr:--master-port` (torchrun's static rendezvous).
`accelerate launch -m llmkit pretrain ...` works too (recipes/accelerate/ has configs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from llmkit.io.interrupt import EXIT_CODES
from llmkit.io.runs import writer_locks_env
from llmkit.train.arguments import in_distributed_run


@dataclass(frozen=True)
class Nodes:
    count: int = 1
    rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


def relaunch_if_needed(devices: int, nodes: Nodes | None = None) -> bool:
    """True if this process launched the workers (and they have finished)."""
    nodes = nodes or Nodes()
    if (devices <= 1 and nodes.count <= 1) or in_distributed_run():
        return False
    env = dict(os.environ) | writer_locks_env()  # rank 0 writes the run this process locked
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if nodes.count == 1:
        cmd.append("--standalone")
        where = ""
    else:
        cmd += [f"--nnodes={nodes.count}", f"--node_rank={nodes.rank}"]
        cmd += [f"--master_addr={nodes.master_addr}", f"--master_port={nodes.master_port}"]
        where = f" on node {nodes.rank} of {nodes.count}"
    cmd += [f"--nproc_per_node={devices}", "-m", "llmkit", *sys.argv[1:]]
    processes = f"{devices} process{'es' if devices > 1 else ''}"
    print(f"launching {processes}{where}: {' '.join(cmd[2:])}", flush=True)
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
