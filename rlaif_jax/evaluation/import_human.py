"""Turns human raters' filled ranking sheets back into win rates.

  python -m rlaif_jax.evaluation.import_human --answers answers.csv --key runs/x/evaluate/human/key.json

Prints the win-rate matrix with 95% intervals and writes it as JSON beside the answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rlaif_jax.evaluation import tables
from rlaif_jax.evaluation.human import import_rankings


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--answers", required=True, help="the filled sheet.csv, or answers.csv from sheet.html")
  parser.add_argument("--key", required=True, help="key.json written beside the sheets")
  parser.add_argument("--out", default=None, help="JSON output (default: <answers>.winrates.json)")
  args = parser.parse_args(argv)
  try:
    result = import_rankings(args.answers, args.key)
  except (ValueError, OSError) as e:
    print(f"import_human: error: {e}", file=sys.stderr)
    return 2
  names = [n for n in result["pairwise"]]
  print(f"{result['items']} rated items; win rate of row vs column [95% interval]")
  for a in names:
    cells = [
      "-"
      if a == b
      else f"{result['pairwise'][a][b]['rate']:.2f} [{result['pairwise'][a][b]['low']:.2f}, "
      f"{result['pairwise'][a][b]['high']:.2f}]"
      for b in names
    ]
    print(f"{a:>12}: " + "  ".join(cells))
  print("ranking (mean win rate; equal scores share a rank): " + tables.ranking_text(result["ranking"]))
  out = args.out or os.path.splitext(args.answers)[0] + ".winrates.json"
  with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  print(f"written: {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
