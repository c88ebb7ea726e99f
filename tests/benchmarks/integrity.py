"""The cost of record checksums: ``sprawlctl bench`` against a node started
from a given source tree, with the node's CPU time per message.

    git archive BEFORE sprawl twisted bin | tar -x -C /tmp/before
    git archive AFTER sprawl twisted bin | tar -x -C /tmp/after
    PYTHONPATH=/tmp/before:tests python -m benchmarks.integrity /tmp/before before \\
        --messages 300000 --batch 100 --publishers 8 --subscribers 0 --acks leader
    PYTHONPATH=/tmp/after:tests python -m benchmarks.integrity /tmp/after after ... (same options)

The tree goes first on ``PYTHONPATH``: the node and the ``sprawlctl`` it runs are that
tree's ``sprawl``.

Alternate the two a few times: the VM is shared.  Extra node options (e.g.
``--scrub-rate 0`` for a tree that has the scrub) go in ``SPRAWL_NODE_ARGS``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import sprawl
from harness import NodeProcess


def main() -> None:
    """Run one benchmark and print msgs/s and node CPU µs per message."""
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if len(sys.argv) < 3:
        sys.exit(f"usage: python -m benchmarks.integrity TREE TAG [sprawlctl bench options]\n{__doc__}")
    src, tag, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    if not Path(sprawl.__file__).resolve().is_relative_to(Path(src).resolve()):
        sys.exit(f"sprawl comes from {sprawl.__file__}, not {src}: run with PYTHONPATH={src}:tests")

    base = Path(tempfile.mkdtemp(prefix=f"sprawl-bench-{tag}-"))
    node_args = os.environ.get("SPRAWL_NODE_ARGS", "").split()
    node = NodeProcess(base / "n", "--memory-budget", "256MB", *node_args).start()

    def cpu() -> float:
        assert node.proc is not None
        fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        env = dict(os.environ, PYTHONPATH=src)
        before = cpu()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "from sprawl.ctl import main; main()",
                "--nodes",
                node.url,
                "bench",
                "--json",
            ]
            + ["--no-progress", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        used = cpu() - before
        result = json.loads(out.stdout)
        msgs = int(extra[extra.index("--messages") + 1]) if "--messages" in extra else 100_000
        load = Path("/proc/loadavg").read_text().split()[0]
        print(
            f"{tag}: {result['publish_msgs_per_s']:.0f} msgs/s, node CPU {used / msgs * 1e6:.1f} us/msg, load {load}"
        )
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
