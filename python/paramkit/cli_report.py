"""`paramkit report PATH -o report.html`: scan a model (statistics and, unless --no-quant, the default
quantization schemes) and write the self-contained HTML report of it (ScanReport.to_html)."""
from __future__ import annotations

import os
import sys


def register(subparsers):
    p = subparsers.add_parser(
        "report", help="write a self-contained HTML report with charts (needs the report extra)",
        description="Scan a model and write one self-contained HTML file (inline CSS and SVG charts; no script, "
                    "no network): summary (counts, dtypes, size, roles, MoE, ties), parameters by module and "
                    "layer, per-layer absmax / std / zeros, value histograms of selected tensors, SQNR per layer "
                    "for each quantization scheme, the outlier table and the deployment plan. Needs matplotlib: "
                    "pip install 'paramkit[report]'.")
    p.add_argument("path", help="weight file (safetensors, PyTorch, NumPy, GGUF), index or directory")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the HTML file to write (atomically)")
    p.add_argument("--no-quant", action="store_true", help="skip the simulated quantization (default: the nine "
                                                           "default schemes, in the same pass as the statistics)")
    p.add_argument("--histograms", type=int, default=12, metavar="N",
                   help="value histograms of up to N tensors (default 12; 0: none)")
    p.add_argument("--context", type=int, default=8192, metavar="N", help="tokens for the plan's KV cache "
                                                                         "(default 8192)")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu", "numpy"],
                   help="compute backend (as for scan)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (as for scan)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.add_argument("--lenient", action="store_true", help="tolerate a malformed __metadata__ (strict=False)")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args) -> int:
    from .api import scan
    from .report_charts import require
    require()   # before the data pass: the missing extra is said at once
    if args.histograms < 0:
        raise ValueError("--histograms N needs N >= 0")
    r = scan(args.path, backend=args.backend, threads=args.threads, strict=not args.lenient,
             quant=None if args.no_quant else "default", progress=sys.stderr.isatty() or args.progress)
    text = r.to_html(args.output, histograms=args.histograms, context=args.context)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1024:.0f} KiB, {text.count('<svg'):,} charts): "
          f"{r.total_params:,} parameters in {len(r.tensors):,} tensors")
    return 0
