"""Write the GPU benchmark's results table into docs/benchmarks.md.

    python bench/gpu_table.py bench/results_gpu.jsonl docs/benchmarks.md

Reads the JSON lines `bench/bench_gpu_step.py` appends and replaces the table between
the markers `<!-- gpu-table:start -->` and `<!-- gpu-table:end -->` in the document
(written atomically, by `megatron_vdit.utils.atomic_io`). Later lines for the same
(device, layout, tokens, recompute, ZeRO stage, attention backend) replace earlier ones.
"""
from __future__ import annotations

import argparse
import json
import sys

from megatron_vdit.utils.atomic_io import write_text_atomic

START, END = "<!-- gpu-table:start -->", "<!-- gpu-table:end -->"
HEADER = ("| device | layout | tokens/sample | recompute | ZeRO | attention | step time (s) "
          "| tokens/s | MFU | peak memory (GiB) |\n|---|---|---|---|---|---|---|---|---|---|")


def layout_name(result: dict) -> str:
    lay = result["layout"]
    parts = [f"{name.upper()}{lay[name]}" for name in ("tp", "cp", "pp", "dp") if lay[name] > 1]
    if lay["cp"] > 1:
        parts[[p.startswith("CP") for p in parts].index(True)] += f" {lay['cp_comm_type']}"
    if lay.get("sp"):
        parts.append("SP")
    gpus = result["world_size"]
    return " x ".join(parts or ["1 rank"]) + f" ({gpus} GPU{'s' if gpus > 1 else ''})"


def table_row(result: dict) -> str:
    mfu = "-" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
    return (f"| {result['device']} | {layout_name(result)} | {result['tokens_per_sample']} "
            f"| {result['recompute'] or 'none'} | {result['zero_stage']} "
            f"| {result.get('attention_backend', '-')} | {result['step_time_s']:.3f} "
            f"| {result['tokens_per_s']:,.0f} | {mfu} | {result['peak_memory_gib']:.1f} |")


def table(results: list[dict]) -> str:
    latest = {}
    for r in results:
        key = (r["device"], layout_name(r), r["tokens_per_sample"], r["recompute"],
               r["zero_stage"], r.get("attention_backend"))
        latest[key] = r
    return "\n".join([HEADER, *(table_row(r) for r in latest.values())])


def write_table(results_path: str, doc_path: str) -> None:
    with open(results_path) as f:
        results = [json.loads(line) for line in f if line.strip()]
    if not results:
        raise ValueError(f"{results_path}: no result lines")
    with open(doc_path) as f:
        doc = f.read()
    if doc.count(START) != 1 or doc.count(END) != 1 or doc.index(START) > doc.index(END):
        raise ValueError(f"{doc_path}: needs exactly one {START} ... {END} block")
    before, rest = doc.split(START)
    after = rest.split(END)[1]
    write_text_atomic(doc_path, f"{before}{START}\n{table(results)}\n{END}{after}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gpu_table.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="JSON lines from bench_gpu_step.py --json-out")
    p.add_argument("doc", help="markdown file holding the table markers")
    args = p.parse_args(argv)
    try:
        write_table(args.results, args.doc)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        p.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
