"""The method's data formats, parsed into flat records, and prompt formatting in one place.

Records are dicts of strings and ints, ready for seqio:
- SFT:     {id, inputs, targets}
- prompts: {id, inputs}
- pairs:   {id, inputs, response_a, response_b, human_choice, metadata}
  human_choice is 0 when humans preferred response_a, 1 for response_b, -1 when unknown;
  metadata is a JSON string.
"""

from __future__ import annotations

import hashlib
import json

from rlaif_jax.data.io import FieldError, require_str

TLDR_CUE = "TL;DR:"
ASSISTANT_CUE = "\n\nAssistant:"
HUMAN_CUE = "\n\nHuman:"
HIGH_CONFIDENCE = (1, 2, 8, 9)  # the comparisons the paper keeps for alignment studies


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
  """'SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...\\nTL;DR:' (Stiennon et al. 2020)."""
  return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\n{TLDR_CUE}"


def _tldr_fields(obj: dict) -> tuple[str, str, str]:
  subreddit = require_str(obj, "subreddit").strip()
  if subreddit.startswith("r/"):
    subreddit = subreddit[2:]
  return subreddit, require_str(obj, "title"), require_str(obj, "post")


def _default_id(obj: dict, where: str) -> str:
  rid = obj.get("id")
  if rid is None:  # the file's folder, name and line: unique across subsets of one data root
    return "/".join(where.split("/")[-2:])
  if not isinstance(rid, (str, int)):
    raise FieldError("id", f"expected a string or integer, got {type(rid).__name__}")
  return str(rid)


def parse_tldr_sft(obj: dict, where: str) -> dict:
  """A filtered TL;DR record (subreddit, title, post, summary) -> SFT record."""
  prompt = tldr_prompt(*_tldr_fields(obj))
  return {"id": _default_id(obj, where), "inputs": prompt, "targets": " " + require_str(obj, "summary").strip()}


def parse_tldr_prompt(obj: dict, where: str) -> dict:
  return {"id": _default_id(obj, where), "inputs": tldr_prompt(*_tldr_fields(obj))}


def parse_comparison(obj: dict, where: str, high_confidence_only: bool = False) -> dict | None:
  """An OpenAI summarize-from-feedback comparison -> pair record (None when filtered out)."""
  info = obj.get("info")
  if not isinstance(info, dict):
    raise FieldError("info", "missing or not an object")
  summaries = obj.get("summaries")
  if not isinstance(summaries, list) or len(summaries) != 2:
    raise FieldError("summaries", "expected a list of two summaries")
  texts = []
  for i, s in enumerate(summaries):
    if not isinstance(s, dict):
      raise FieldError(f"summaries[{i}]", "expected an object")
    texts.append(" " + require_str(s, "text").strip())
  choice = obj.get("choice")
  if not isinstance(choice, int) or isinstance(choice, bool) or choice not in (0, 1):
    raise FieldError("choice", f"expected 0 or 1, got {choice!r}")
  extra = obj.get("extra") or {}
  confidence = extra.get("confidence") if isinstance(extra, dict) else None
  if confidence is not None and (not isinstance(confidence, int) or not 1 <= confidence <= 9):
    raise FieldError("extra.confidence", f"expected an integer 1-9, got {confidence!r}")
  if high_confidence_only and confidence not in HIGH_CONFIDENCE:
    return None
  try:
    prompt = tldr_prompt(*_tldr_fields(info))
  except FieldError as e:
    raise FieldError(f"info.{e.field}", e.problem) from None
  metadata = {
    "policies": [s.get("policy") for s in summaries],
    "confidence": confidence,
    "worker": obj.get("worker"),
    "batch": obj.get("batch"),
    "split": obj.get("split"),
  }
  rid = f"{info.get('id', where)}/{obj.get('worker', '')}/{obj.get('batch', '')}"
  return {
    "id": rid,
    "inputs": prompt,
    "response_a": texts[0],
    "response_b": texts[1],
    "human_choice": choice,
    "metadata": json.dumps(metadata),
  }


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
  """(context up to and including the last '\\n\\nAssistant:', chosen reply, rejected reply)."""
  i, j = chosen.rfind(ASSISTANT_CUE), rejected.rfind(ASSISTANT_CUE)
  if i < 0:
    raise FieldError("chosen", "has no '\\n\\nAssistant:' turn")
  if j < 0:
    raise FieldError("rejected", "has no '\\n\\nAssistant:' turn")
  context = chosen[: i + len(ASSISTANT_CUE)]
  if rejected[: j + len(ASSISTANT_CUE)] != context:
    raise FieldError("rejected", "does not share chosen's dialogue before the last Assistant turn")
  reply_a, reply_b = chosen[len(context) :], rejected[len(context) :]
  if not reply_a.strip():
    raise FieldError("chosen", "empty response")
  if not reply_b.strip():
    raise FieldError("rejected", "empty response")
  return context, reply_a, reply_b


def swap_order(example_id: str, seed: int = 0) -> bool:
  """A stable coin flip per id, so that the preferred response is not always first."""
  return hashlib.sha256(f"{seed}:{example_id}".encode()).digest()[0] % 2 == 1


def parse_hh_pair(obj: dict, where: str, randomize_order: bool = True) -> dict:
  """An hh-rlhf line {chosen, rejected} -> pair record; the order is shuffled per id."""
  context, chosen, rejected = split_dialogue(require_str(obj, "chosen"), require_str(obj, "rejected"))
  rid = _default_id(obj, where)
  swap = randomize_order and swap_order(rid)
  a, b = (rejected, chosen) if swap else (chosen, rejected)
  return {
    "id": rid,
    "inputs": context,
    "response_a": a,
    "response_b": b,
    "human_choice": 1 if swap else 0,
    "metadata": "{}",
  }


def parse_hh_sft(obj: dict, where: str) -> dict:
  """An hh-rlhf line -> SFT record: the context up to the last Assistant cue, then the chosen
  reply as it is (leading space kept). The rejected reply is read too, so that a line whose
  two dialogues diverge before the last Assistant turn is refused here as for pairs."""
  context, chosen, _ = split_dialogue(require_str(obj, "chosen"), require_str(obj, "rejected"))
  return {"id": _default_id(obj, where), "inputs": context, "targets": chosen}


def parse_hh_prompt(obj: dict, where: str) -> dict:
  """The shared dialogue context of an hh-rlhf line, as an RL prompt."""
  pair = parse_hh_pair(obj, where, randomize_order=False)
  return {"id": pair["id"], "inputs": pair["inputs"]}


def parse_candidate(obj: dict, where: str) -> dict:
  """The project's own pair format: {id, input, response_a, response_b, human_choice?, metadata?}."""
  record = {
    "id": _default_id(obj, where),
    "inputs": require_str(obj, "input"),
    # an empty response is a legitimate (bad) candidate, e.g. a policy that stopped at once
    "response_a": require_str(obj, "response_a", allow_empty=True),
    "response_b": require_str(obj, "response_b", allow_empty=True),
  }
  choice = obj.get("human_choice")
  if choice is not None and (not isinstance(choice, int) or isinstance(choice, bool) or choice not in (0, 1)):
    raise FieldError("human_choice", f"expected 0, 1 or null, got {choice!r}")
  metadata = obj.get("metadata", {})
  if not isinstance(metadata, dict):
    raise FieldError("metadata", "expected an object")
  return {**record, "human_choice": -1 if choice is None else choice, "metadata": json.dumps(metadata)}


def parse_prompt(obj: dict, where: str) -> dict:
  """The project's prompts-only format: {id, input}."""
  return {"id": _default_id(obj, where), "inputs": require_str(obj, "input")}


# ---- files as they come: the forms researchers arrive with --------------------------------------
PAIR_FORMS = (
  "{input, response_a, response_b, human_choice?} (this project's)",
  "{prompt, chosen, rejected} (strings or chat messages)",
  "{chosen, rejected} (hh-rlhf dialogues)",
)
PROMPT_KEYS = ("input", "prompt")
RESPONSE_KEYS = ("completion", "target", "response")


def _chat(messages: list, field: str) -> str:
  """Chat messages [{role, content}] as an hh-rlhf dialogue ending with the Assistant's cue."""
  text = ""
  for i, m in enumerate(messages):
    if not (isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("user", "assistant")):
      raise FieldError(f"{field}[{i}]", "expected {role: 'user' or 'assistant', content: string}")
    text += f"{HUMAN_CUE if m['role'] == 'user' else ASSISTANT_CUE} {m['content'].strip()}"
  return text + ASSISTANT_CUE


def _text(obj: dict, field: str, allow_empty: bool = False) -> str:
  """A string field, or chat messages: a prompt becomes a dialogue; a response is its last
  message's content, which must be the assistant's."""
  value = obj.get(field)
  if not isinstance(value, list):
    return require_str(obj, field, allow_empty)
  if field != "prompt":
    if not value or not isinstance(value[-1], dict) or value[-1].get("role") != "assistant":
      raise FieldError(field, "chat messages must end with the assistant's reply")
    return " " + require_str(value[-1], "content", allow_empty).strip()
  return _chat(value, field)


def parse_any_pair(obj: dict, where: str) -> dict:
  """A pair in any of PAIR_FORMS. Chosen/rejected forms get a stable per-id order (so response_a
  is not always the preferred one) and human_choice from it."""
  if "response_a" in obj or "input" in obj:
    return parse_candidate(obj, where)
  if "chosen" not in obj or "rejected" not in obj:
    raise FieldError("<line>", f"not a pair: fields {sorted(obj)}; expected one of {', '.join(PAIR_FORMS)}")
  if "prompt" not in obj:
    return parse_hh_pair(obj, where)
  rid = _default_id(obj, where)
  chosen, rejected = _text(obj, "chosen", allow_empty=True), _text(obj, "rejected", allow_empty=True)
  swap = swap_order(rid)
  return {
    "id": rid,
    "inputs": _text(obj, "prompt"),
    "response_a": rejected if swap else chosen,
    "response_b": chosen if swap else rejected,
    "human_choice": 1 if swap else 0,
    "metadata": "{}",
  }


def parse_any_example(obj: dict, where: str) -> dict:
  """{id, inputs, responses, human_scores} from a pair (any of PAIR_FORMS), a prompt with a
  response ({prompt or input, completion, target or response}) or a prompt alone ({prompt} or
  {input}): what RL, RRHF, candidates and evaluation read from a file."""
  if "chosen" in obj or "response_a" in obj:
    pair = parse_any_pair(obj, where)
    choice = pair["human_choice"]
    human = None if choice < 0 else ([1.0, 0.0] if choice == 0 else [0.0, 1.0])
    return {
      "id": pair["id"],
      "inputs": pair["inputs"],
      "responses": [pair["response_a"], pair["response_b"]],
      "human_scores": human,
    }
  key = next((k for k in PROMPT_KEYS if k in obj), None)
  if key is None:
    raise FieldError("<line>", f"no prompt: fields {sorted(obj)}; expected 'prompt' or 'input', or a pair")
  target = next((k for k in RESPONSE_KEYS if k in obj), None)
  responses = [_text(obj, target)] if target else []
  return {
    "id": _default_id(obj, where),
    "inputs": _text(obj, key),
    "responses": responses,
    "human_scores": [1.0] if target else None,
  }
