"""The training chat template written as the Jinja `chat_template` transformers runs.

An export must prompt the model the way it was trained, through the path HF users take:
`processor.apply_chat_template(messages)` with content lists such as
`[{"type": "image"}, {"type": "text", "text": "What is this?"}]`. The Jinja text is
derived from the template the run trained with (templates.py), so the two cannot drift:
a `ChatTemplate` is spelled out field by field, and the tokenizer's own template
("tokenizer") is kept verbatim behind a preamble that turns content lists into the
strings it expects.

Content lists become text in order: each image entry is `<image>\\n` (LLaVA's data puts
the image tag on its own line before the question), each text entry its text. String
contents are left as they are, so text-only chats render exactly as before.

No BOS is written: `processor(text=...)` tokenizes with the tokenizer's special tokens,
which adds the BOS where the tokenizer has one (as llava-hf's own templates assume),
exactly as training tokenizes (`ChatTemplate.add_bos`).
"""

import json

from visregion_jax.data.templates import ASSISTANT, IMAGE_TAG, SYSTEM, TEMPLATES, USER, ChatTemplate
from visregion_jax.errors import VisRegionError

# Every line ends with a block tag: transformers renders with trim_blocks, which drops
# the newline after one, so the template's own layout never reaches the prompt.
# Message contents as strings: content lists rendered in order, strings untouched.
_CONTENT_AS_TEXT = (
    "{% set converted = namespace(messages=[]) %}\n"
    "{% for message in messages %}\n"
    "{% if message['content'] is string %}\n"
    "{% set converted.messages = converted.messages + [message] %}\n"
    "{% else %}\n"
    "{% set text = namespace(value='') %}\n"
    "{% for part in message['content'] %}\n"
    "{% if part['type'] == 'image' %}{% set text.value = text.value + " + json.dumps(IMAGE_TAG + "\n") + " %}\n"
    "{% elif part['type'] == 'text' %}{% set text.value = text.value + part['text'] %}\n"
    "{% endif %}\n"
    "{% endfor %}\n"
    "{% set converted.messages = converted.messages + [{'role': message['role'], 'content': text.value}] %}\n"
    "{% endif %}\n"
    "{% endfor %}\n"
    "{% set messages = converted.messages %}\n")


def _literal(text: str) -> str:
  return json.dumps(text, ensure_ascii=False)


def _spelled_out(t: ChatTemplate) -> str:
  """A ChatTemplate's `render`, in Jinja: system, user and assistant turns, then the
  generation prompt (the assistant prefix, where inference prompts end)."""
  before, after = t.system_format.split("{}") if t.system_format else ("", "")
  body = ("message['content']" if t.user_text
          else f"{_literal(IMAGE_TAG)} * message['content'].count({_literal(IMAGE_TAG)})")
  return (
      f"{{% if messages and messages[0]['role'] == '{SYSTEM}' %}}\n"
      "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}\n"
      f"{{% else %}}{{% set system = {_literal(t.system)} %}}{{% set turns = messages %}}\n"
      "{% endif %}\n"
      f"{{% if system and {_literal(t.system_format)} %}}{{{{ {_literal(before)} + system + {_literal(after)} }}}}"
      "{% endif %}\n"
      "{% for message in turns %}\n"
      f"{{% if message['role'] == '{USER}' %}}{{{{ {_literal(t.user_prefix)} + {body} + {_literal(t.user_suffix)} }}}}"
      f"{{% elif message['role'] == '{ASSISTANT}' %}}{{{{ {_literal(t.assistant_prefix + t.reply_prefix)} + "
      f"message['content'] + {_literal(t.end_of_turn + t.after_reply)} }}}}"
      "{% else %}{{ raise_exception('expected the roles user and assistant (and a first system "
      "message), got ' + message['role']) }}{% endif %}\n"
      "{% endfor %}\n"
      f"{{% if add_generation_prompt %}}{{{{ {_literal(t.assistant_prefix)} }}}}{{% endif %}}")


def chat_template_jinja(template: str, tokenizer) -> str:
  """The Jinja chat template of a model trained with `data.template=template`.

  "tokenizer" wraps `tokenizer.chat_template`; any other name spells out its
  `ChatTemplate`.
  """
  if template not in TEMPLATES:
    raise VisRegionError("data.template", f"expected one of {sorted(TEMPLATES)}, got {template!r}")
  spec = TEMPLATES[template]
  if isinstance(spec, ChatTemplate):
    return _CONTENT_AS_TEXT + _spelled_out(spec)
  own = getattr(tokenizer, "chat_template", None)
  if not isinstance(own, str) or not own:
    raise VisRegionError("template 'tokenizer'", "expected a tokenizer with a chat_template")
  if own.startswith(_CONTENT_AS_TEXT):  # already derived (a re-export of an export)
    return own
  return _CONTENT_AS_TEXT + own
