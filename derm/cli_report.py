"""`python -m derm report IMAGE... --out DIR`: one A4 PDF per image (derm.report_pdf).

Kept out of derm/cli.py so that the parser stays cheap to import: reportlab and the models load only
when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from derm.cli_common import images, load_predictor, progress


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="a one-page PDF report per image",
                       description="Writes DIR/<stem>-report.pdf per image: the image, the lesion outline, the "
                                   "Grad-CAM of the top class, the probabilities, the measurements, any warnings "
                                   "(the domain gate's refusal first), the weights' version and the disclaimer. A "
                                   "file that is not a usable image gets one line on stderr, the others are still "
                                   "written, and the exit code is 1.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (JPEG, PNG, BMP, TIFF, WebP)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--weights", help="weights folder (default weights/ or $DERM_WEIGHTS)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from derm import report_pdf

    predictor = load_predictor(args.weights)
    if predictor is None:
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"derm report: cannot write to {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    failed = 0
    for path, rgb in progress(images(args.paths), len(args.paths), "report"):
        if rgb is None:
            failed += 1
            continue
        target = out / report_pdf.report_file_name(path)
        target.write_bytes(report_pdf.build_pdf(report_pdf.inputs_for(predictor, rgb, Path(path).name)))
        print(target, flush=True)
    return 1 if failed else 0
