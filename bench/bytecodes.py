"""Python bytecodes per connection, per function of the relay: where the interpreter's
share of a connection goes, counted, not sampled.

    .venv/bin/python bench/bytecodes.py [--modes terminate] [--connections N] [--top K]

How it works: the relay runs under opcode tracing (`sys.settrace` with
`f_trace_opcodes`: one event per bytecode executed, counted per code object) with the
loads of `bench/instructions.py` (its modes, backend and client: connections one after
the other, so each wake carries one connection's events, the worst case for the loop's
share). The counts with N connections minus those with `--warmup` connections (start-up,
first-use imports, shutdown), divided by the difference, are the figures. Tracing makes
the relay ~50x slower but changes no count: the same build and load give the same
figures on any machine. Callgrind (`bench/instructions.py`) says how many instructions
the interpreter spends in all; this says in which functions. A bytecode costs tens of
instructions (a call or an attribute on a C object more), so read it as a ranking.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import instructions as ins

# Run as the relay's interpreter: count opcodes per function, dump them as JSON at exit.
TRACER = """
import atexit, collections, json, sys
counts = collections.Counter()
def tracer(frame, event, arg):
    frame.f_trace_opcodes = True
    co = frame.f_code
    key = co.co_filename.rsplit("/src/", 1)[-1] + ":" + str(co.co_firstlineno) + " " + co.co_name
    def local(frame, event, arg):
        if event == "opcode":
            counts[key] += 1
        return local
    return local
out, sys.argv = sys.argv[1], ["snirelay", "-c", sys.argv[2]]
atexit.register(lambda: json.dump(counts, open(out, "w")))
sys.settrace(tracer)
from snirelay.cli import main
main()
"""


def count(mode: str, n: int, work: Path, certs: ins.Certs | None) -> Counter[str]:
    """Bytecodes per function of one traced relay run with `n` connections."""
    out = work / f"bc.{mode}.{n}.json"
    ins.run_loaded(
        lambda cfg: [sys.executable, "-c", TRACER, str(out), str(cfg)], mode, n, work, certs
    )
    return Counter(json.loads(out.read_text()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--modes", default="terminate", help=f"comma-separated, of {', '.join(ins.CONFIGS)}"
    )
    ap.add_argument("--connections", type=int, default=120, metavar="N")
    ap.add_argument("--warmup", type=int, default=20, metavar="N", help="connections subtracted")
    ap.add_argument("--top", type=int, default=30, metavar="K", help="functions listed")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in ins.CONFIGS]:
        ap.error(f"unknown mode(s): {', '.join(unknown)}")
    if args.connections <= args.warmup:
        ap.error("--connections must be above --warmup")
    with tempfile.TemporaryDirectory(prefix="snirelay-bytecodes-") as tmp:
        work = Path(tmp)
        certs = ins.Certs(work) if any(m in ins.TLS_MODES for m in modes) else None
        for mode in modes:
            few = count(mode, args.warmup, work, certs)
            many = count(mode, args.connections, work, certs)
            k = args.connections - args.warmup
            per = {f: (many[f] - few[f]) / k for f in many.keys() | few.keys()}
            print(f"{mode}: {sum(per.values()):,.0f} bytecodes per connection")
            for f, v in sorted(per.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"  {v:8.1f}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
