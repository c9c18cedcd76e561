"""The stages the command line runs, by name: each stage's function and a line on what it does.

run.stages, --stages, --settings and the CLI's help read this table; it is the one module that
imports every stage (no stage imports another), and it reads no gin.
"""

from rlaif_jax.stages import (
  candidates,
  data_report,
  dpo,
  evaluate,
  export,
  label,
  labelers,
  report,
  rl,
  rm,
  rrhf,
  sft,
  tasks_report,
)

# Stage name -> (function, what it does).
STAGES = {
  "data": (data_report.run_data_report, "load seqio tasks and report examples, truncation and skipped lines"),
  "sft": (sft.run_sft, "supervised fine-tuning on a seqio SFT task, then sample generations"),
  "label": (label.run_label, "AI preference labels for a pair task or candidates file, with an alignment report"),
  "labelers": (labelers.run_labelers, "several AI labelers label the same pairs: alignment and position bias each"),
  "rm": (rm.run_rm, "reward model on AI soft labels (distilled RLAIF), human labels (RLHF) or both"),
  "rl": (
    rl.run_rl,
    "REINFORCE + value baseline + KL to SFT (or PPO, RLOO, GRPO, OAIF); reward: an RM, the direct labeler, or pairs",
  ),
  "dpo": (
    dpo.run_dpo,
    "DPO or IPO on labeled pairs: AI soft labels (default), human labels or both; no RM, no sampling",
  ),
  "rrhf": (rrhf.run_rrhf, "RRHF: rank k scored responses (reward model, direct labeler or human) + SFT on the best"),
  "candidates": (candidates.run_candidates, "pairs of responses sampled from a policy, for the AI labeler"),
  "evaluate": (evaluate.run_evaluate, "AI-judged win rates between policies, harmless rate, lengths, human sheets"),
  "export_hf": (
    export.run_export_hf,
    "a trained policy or reward model (or pretrained weights) as a Hugging Face folder transformers loads",
  ),
  "report": (report.run_report, "one report.md/report.json (and plots) over a pipeline's stage folders"),
  "tasks_report": (
    tasks_report.run_tasks_report,
    "the paper's headline table over the tasks' pipeline folders: RLAIF, RLHF, direct RLAIF vs SFT, harmless rates",
  ),
}
