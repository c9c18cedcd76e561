"""Chat formats for instruction-tuned labelers, judges and scorers (defined in data.chat, which
policies use too).

A labeling prompt is plain text whose last line is the answer's lead-in ("Preferred Summary=",
"Score (1-10)="). In a chat format the prompt becomes the user's turn and the lead-in opens the
model's turn, so the answer token is what the assistant says first:

  <|im_start|>user\\n{preamble, context, responses}<|im_end|>\\n<|im_start|>assistant\\n{lead-in}
"""

from rlaif_jax.data.chat import FORMATS, ChatFormat, resolve

__all__ = ["FORMATS", "ChatFormat", "resolve"]
