"""Side-by-side sheets for human raters, and the importer that turns their rankings into win rates.

`export_sheets` writes, for each input, every policy's response in a random order (per item,
from a seed) under neutral labels "response 1..k": `sheet.csv` to fill in (rank_1..rank_k, 1 =
best, no ties), `sheet.html` (the same items as a static page whose button downloads the
filled answers as CSV) and `key.json`, which maps each item's labels back to policies. Raters
get the sheet, never the key. `import_rankings` reads a filled sheet (or the page's download)
with the key and returns every pairwise win rate with its interval.
"""

from __future__ import annotations

import csv
import html
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from rlaif_jax.evaluation import stats

SHEET, PAGE, KEY = "sheet.csv", "sheet.html", "key.json"


def export_sheets(items: Sequence[Mapping], policies: Sequence[str], outdir: str, seed: int = 0) -> dict:
  """items: [{id, prompt, responses: {policy: text}}]. Writes sheet.csv, sheet.html, key.json."""
  if len(policies) < 2:
    raise ValueError(f"export_sheets needs at least two policies, got {list(policies)}")
  rng = np.random.default_rng(seed)
  os.makedirs(outdir, exist_ok=True)
  k = len(policies)
  order = rng.permutation(len(items))  # item order is shuffled too, so no policy sits in a pattern
  rows, key = [], {}
  for n, i in enumerate(order):
    item = items[int(i)]
    missing = [p for p in policies if p not in item["responses"]]
    if missing:
      raise ValueError(f"item {item['id']!r} has no response from {missing}")
    shown = [policies[j] for j in rng.permutation(k)]
    label = f"item-{n + 1:04d}"
    key[label] = {"id": item["id"], "policies": shown}
    rows.append({"item": label, "prompt": item["prompt"], "responses": [item["responses"][p] for p in shown]})
  header = ["item", "prompt"] + [f"response_{j + 1}" for j in range(k)] + [f"rank_{j + 1}" for j in range(k)]
  with open(os.path.join(outdir, SHEET), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(header)
    for r in rows:
      w.writerow([r["item"], r["prompt"], *r["responses"], *[""] * k])
  with open(os.path.join(outdir, KEY), "w", encoding="utf-8") as f:
    json.dump({"policies": list(policies), "seed": seed, "items": key}, f, indent=1)
  with open(os.path.join(outdir, PAGE), "w", encoding="utf-8") as f:
    f.write(_page(rows, k))
  return {"items": len(rows), "sheet": os.path.join(outdir, SHEET), "page": os.path.join(outdir, PAGE)}


def _page(rows, k: int) -> str:
  blocks = []
  for r in rows:
    cells = "".join(
      f'<div class="resp"><h4>Response {j + 1} <label>rank <input type="number" min="1" max="{k}" '
      f'data-item="{r["item"]}" data-slot="{j + 1}"></label></h4><pre>{html.escape(t)}</pre></div>'
      for j, t in enumerate(r["responses"])
    )
    blocks.append(
      f'<section><h3>{r["item"]}</h3><pre class="prompt">{html.escape(r["prompt"])}</pre>'
      f'<div class="row">{cells}</div></section>'
    )
  header = ",".join(["item"] + [f"rank_{j + 1}" for j in range(k)])
  script = (
    "function download(){const rows={};document.querySelectorAll('input[data-item]').forEach(e=>{"
    "(rows[e.dataset.item]=rows[e.dataset.item]||[])[e.dataset.slot-1]=e.value;});"
    f"let out='{header}\\n';for(const [item,r] of Object.entries(rows)){{out+=item+','+r.join(',')+'\\n';}}"
    "const a=document.createElement('a');a.href=URL.createObjectURL(new Blob([out],{type:'text/csv'}));"
    "a.download='answers.csv';a.click();}"
  )
  return (
    "<!doctype html><html><head><meta charset='utf-8'><title>Rank the responses</title><style>"
    "body{font-family:sans-serif;max-width:1200px;margin:auto}pre{white-space:pre-wrap}"
    ".row{display:flex;gap:1em}.resp{flex:1;border:1px solid #ccc;padding:.5em}.prompt{background:#f4f4f4}"
    "</style></head><body><h1>Rank the responses to each input</h1>"
    f"<p>1 = best, {k} = worst, no ties. The order of responses is random. When done, "
    "<button onclick='download()'>download answers.csv</button> and send it back.</p>"
    + "".join(blocks)
    + f"<script>{script}</script></body></html>"
  )


def read_rankings(path: str, key: Mapping) -> dict[str, dict[str, int]]:
  """{item id: {policy: rank}} from a filled sheet; rows left blank are skipped."""
  k = len(key["policies"])
  out = {}
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    fields = [f"rank_{j + 1}" for j in range(k)]
    missing = [c for c in ["item", *fields] if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path}: missing column(s) {missing}; expected item and {fields}")
    for row in reader:
      line = reader.line_num
      item = row["item"]
      if item not in key["items"]:
        raise ValueError(f"{path}:{line}: field item: {item!r} is not in the key file")
      raw = [(row[c] or "").strip() for c in fields]
      if not any(raw):
        continue  # not rated yet
      ranks = []
      for field, value in zip(fields, raw):
        try:
          ranks.append(int(value))
        except ValueError:
          raise ValueError(f"{path}:{line}: field {field}: expected a rank 1..{k}, got {value!r}") from None
      if sorted(ranks) != list(range(1, k + 1)):
        raise ValueError(f"{path}:{line}: ranks {ranks} must use each of 1..{k} exactly once (no ties)")
      entry = key["items"][item]
      out[entry["id"]] = dict(zip(entry["policies"], ranks))
  return out


def win_rates_from_ranks(ranks: Mapping[str, Mapping[str, int]], policies: Sequence[str]) -> dict:
  """Every pairwise win rate (rank A < rank B) with its interval, and the ranking."""
  pairwise = {}
  for a in policies:
    pairwise[a] = {}
    for b in policies:
      if a != b:
        wins = [1.0 if r[a] < r[b] else 0.0 for r in ranks.values() if a in r and b in r]
        pairwise[a][b] = stats.rate_with_interval(wins)
  return {"items": len(ranks), "pairwise": pairwise, **stats.ranking_summary(pairwise)}


def import_rankings(answers: str, key_file: str) -> dict:
  """Win rates from a filled sheet (sheet.csv with ranks, or the page's answers.csv) and key.json."""
  with open(key_file, encoding="utf-8") as f:
    key = json.load(f)
  ranks = read_rankings(answers, key)
  if not ranks:
    raise ValueError(f"{answers}: no rated rows (fill rank_1..rank_{len(key['policies'])})")
  return win_rates_from_ranks(ranks, key["policies"])
