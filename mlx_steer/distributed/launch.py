"""launch: ``mlx.launch`` with an exit status, and free loopback ports.

``mlx.launch`` (mlx 0.32) stops the other ranks when one fails, but itself exits 0, so a script
or CI job cannot tell that the run failed. This runs it unchanged and exits with the first failed
rank's code (1 if a rank was killed), after killing anything of the run still alive. With no
``--hosts``/``--hostfile`` (every rank on this machine, over 127.0.0.1) and no
``--starting-port``, it picks free ports instead of mlx's fixed 32323, so runs can overlap::

    python -m mlx_steer.distributed.launch --backend ring -n 2 -- mlx-steer extract pairs.jsonl ...
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["free_port_range", "launch", "main"]

_FAILED = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")


def free_port_range(n: int, *, host: str = "127.0.0.1", tries: int = 50) -> int:
    """A first port ``p`` with ``p .. p + n - 1`` all free to bind on ``host`` right now."""
    for _ in range(tries):
        with socket.socket() as s:
            s.bind((host, 0))
            start = s.getsockname()[1]
        if start + n > 65535:
            continue
        socks = []
        try:
            for p in range(start, start + n):
                s = socket.socket()
                socks.append(s)
                s.bind((host, p))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"found no {n} consecutive free ports on {host}")


def launch(args: Sequence[str], *, timeout: float | None = None) -> int:
    """Run ``mlx.launch ARGS`` and return its ranks' status: 0 when every rank succeeded, else
    the first failed rank's exit code (1 if it was killed or the code was 0). The run's
    processes are killed when it ends, times out (status 124) or this is interrupted."""
    args = list(args)
    opts = args[: args.index("--")] if "--" in args else args
    if not any(o.split("=")[0] in ("--hosts", "--hostfile", "--starting-port", "-p") for o in opts):
        n = _ranks(opts)
        args = ["--hosts", "127.0.0.1", "--starting-port", str(free_port_range(n)), *args]
    cmd = [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, start_new_session=True)
    stderr = proc.stderr
    failed: list[int] = []
    try:
        import threading

        def pump() -> None:
            for raw in iter(stderr.readline if stderr is not None else bytes, b""):
                sys.stderr.buffer.write(raw)
                sys.stderr.buffer.flush()
                m = _FAILED.search(raw.decode(errors="replace"))
                if m:
                    failed.append(int(m.group(2)) if m.group(2) not in (None, "0") else 1)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"[mlx_steer.launch] timed out after {timeout:g}s; stopping every rank", file=sys.stderr)
            return 124
        t.join(timeout=5)
    finally:
        _kill_group(proc)
    if code:
        return code
    return (failed[0] if failed[0] > 0 else 1) if failed else 0


def _ranks(opts: list[str]) -> int:
    for i, o in enumerate(opts):
        if o in ("-n", "--repeat-hosts") and i + 1 < len(opts):
            return int(opts[i + 1])
        if o.startswith("--repeat-hosts="):
            return int(o.split("=", 1)[1])
    return 1


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill what is left of the run (the launcher and its ranks share one process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("usage: python -m mlx_steer.distributed.launch [--timeout S] [mlx.launch options] -- COMMAND ...")
        return 0
    timeout = None
    if argv[0] == "--timeout":
        timeout, argv = float(argv[1]), argv[2:]
    return launch(argv, timeout=timeout)


if __name__ == "__main__":
    sys.exit(main())
