"""SIGTERM under pipelined load, repeated: how many requests go unanswered, and how it ends.

Each trial starts a daemon (moving_average only), opens ``--connections`` connections
that each keep ``--inflight`` requests in flight (closed loop, and they go on sending
through the drain, as a client that has not noticed it would), sends SIGTERM after
``--after`` seconds and reads every connection until it ends. Per trial it prints the
requests sent, answered, unanswered, how many of the unanswered were *not* the last
ones sent on their connection (those the server must have read: lost for sure), and
how many connections ended with a reset instead of an EOF.

    .venv/bin/python bench/bench_drain.py --trials 6 --workers 1
    .venv/bin/python bench/bench_drain.py --trials 6 --root ../old-checkout   # before/after
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemon_process import run_daemon  # noqa: E402
from tests.test_drain import LedgerConnection, _run_until_eof  # noqa: E402


def main() -> None:
    """Run the trials and print one line each, then the totals."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--after", type=float, default=1.0, help="seconds before SIGTERM")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose daemon runs")
    args = parser.parse_args()
    import tests.daemon_process as daemon_process

    daemon_process.ROOT = args.root.resolve()
    totals = [0, 0, 0, 0, 0]
    for trial in range(args.trials):
        config = {
            "inference": {"models": {"moving_average": {}}},
            "server": {"workers": args.workers},
        }
        with tempfile.TemporaryDirectory() as tmp, run_daemon(Path(tmp), config) as daemon:
            connections = []
            import socket

            for i in range(args.connections):
                sock = socket.create_connection(("127.0.0.1", daemon.tcp_port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = LedgerConnection(sock, first_id=1 + i * 10_000_000, polite=False)
                connections.append(conn)
                for _ in range(args.inflight):
                    conn.send_next()
            _run_until_eof(connections, args.after, daemon.process.pid, bound_s=60)
            daemon.process.wait(timeout=60)
        sent = sum(len(c.sent) for c in connections)
        answered = sum(1 for c in connections for i in c.sent if c.replies[i])
        lost = 0
        for conn in connections:
            last_answered = max((n for n, i in enumerate(conn.sent) if conn.replies[i]), default=-1)
            lost += sum(1 for i in conn.sent[:last_answered] if not conn.replies[i])
        resets = sum(1 for c in connections if c.reset)
        row = [sent, answered, sent - answered, lost, resets]
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        print(
            f"trial {trial + 1}: sent {sent:,}, answered {answered:,}, unanswered "
            f"{sent - answered} ({lost} before an answered one), resets {resets} of "
            f"{len(connections)} connections",
            flush=True,
        )
    print(
        f"total over {args.trials} trials (workers {args.workers}): sent {totals[0]:,}, "
        f"unanswered {totals[2]}, lost before an answered one {totals[3]}, "
        f"connections reset {totals[4]}"
    )


if __name__ == "__main__":
    main()
