"""Time the ClientHello parse the relay runs on every TLS connection, now and at a git ref.

Run: .venv/bin/python bench/wire_parse.py [--ref REV] [--repeat 9] [--number 20000]

For the 517-byte curl hello and each other TLS vector in tests/vectors/clienthello, it
times `parse_client_hello(data)` reading what the relay needs for every connection
(the normalised SNI, is-IP, size: column "sni") and the same plus `alpn` and `ech` (what
the log record reads: column "+log"), as the best of `--repeat` runs of `--number`
calls, in CPU microseconds per call (time.process_time: on a shared machine this
moves less than wall time). With `--ref REV` the module as it was at REV (loaded from
`git show REV:src/snirelay/wire/clienthello.py`) is timed in the same process, next
to the current one, and the medians over the vectors are compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "vectors" / "clienthello"
MODULE = "src/snirelay/wire/clienthello.py"


def load_at(ref: str, tmp: Path) -> ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:{MODULE}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = tmp / "clienthello_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("clienthello_ref", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["clienthello_ref"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    runs = timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)
    return min(runs) / number * 1e6


def timings(mod: ModuleType, data: bytes, number: int, repeat: int) -> tuple[float, float]:
    parse = mod.parse_client_hello

    def sni() -> object:
        h = parse(data)
        return (h.sni_normalized, h.sni_is_ip, h.size)

    def log() -> object:
        h = parse(data)
        return (h.sni_normalized, h.sni_is_ip, h.size, h.alpn, h.ech)

    return best_us(sni, number, repeat), best_us(log, number, repeat)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--ref", help="also time clienthello.py as it was at this git revision")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--number", type=int, default=20000)
    args = ap.parse_args()

    from snirelay.wire import clienthello

    manifest = json.loads((VECTORS / "manifest.json").read_text())["vectors"]
    files = sorted(v["file"] for v in manifest if v["kind"] == "tls")
    files.remove("curl_sni_http2.bin")
    files.insert(0, "curl_sni_http2.bin")
    with tempfile.TemporaryDirectory() as tmp:
        mods = [("now", clienthello)]
        if args.ref:
            mods.insert(0, (args.ref, load_at(args.ref, Path(tmp))))
        results: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in mods}
        header = f"{'vector':56} {'bytes':>6}" + "".join(
            f" {label[:10] + ' sni':>15} {'+log':>7}" for label, _ in mods
        )
        print(header)
        for name in files:
            data = (VECTORS / name).read_bytes()
            line = f"{name[:56]:56} {len(data):6}"
            for label, mod in mods:
                sni, log = timings(mod, data, args.number, args.repeat)
                results[label].append((sni, log))
                line += f" {sni:15.2f} {log:7.2f}"
            print(line, flush=True)
    for label, rows in results.items():
        print(
            f"{label}: curl 517 B sni {rows[0][0]:.2f} us, +log {rows[0][1]:.2f} us; "
            f"median over {len(rows)} vectors sni {statistics.median(r[0] for r in rows):.2f} "
            f"us, +log {statistics.median(r[1] for r in rows):.2f} us"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
