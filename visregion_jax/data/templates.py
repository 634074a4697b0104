"""Chat templates: how a conversation is written out, and which parts of it are learned.

A template renders validated turns into text segments, each marked learned or not;
`tokenize.py` turns the segments into input_ids and labels. Learned is what the model
has to generate at inference, after the prompt that ends with the assistant's role
header: the reply and the end-of-turn string that lets it stop. The system prompt,
user turns, role headers and whatever follows an end-of-turn are not learned.

`<image>` tags stay in the rendered text; `tokenize.py` replaces them with image
tokens.
"""

import dataclasses

from visregion_jax.errors import VisRegionError

IMAGE_TAG = "<image>"
SYSTEM, USER, ASSISTANT = "system", "user", "assistant"

_LLAVA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The "
                 "assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclasses.dataclass(frozen=True)
class Segment:
  text: str
  learned: bool


def _drop_empty(segments: list) -> list:
  return [s for s in segments if s.text]


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A conversation format spelled out as strings, as LLaVA's `Conversation` objects are.

  A system prompt is `system_format` with `{}` replaced by the prompt (a leading system
  turn overrides `system`; an empty prompt or format writes nothing). A user turn is
  `user_prefix + text + user_suffix`. An assistant turn is `assistant_prefix`, then the
  learned `reply_prefix + text + end_of_turn`, then `after_reply`.

  `add_bos` prepends the BOS token the tokenizer itself puts before text (LLaVA calls
  `tokenizer(prompt)`), so a tokenizer that adds none (SmolLM2's) gets none.
  `special_tokens` must each be a single token of the tokenizer, or the model could
  never learn to emit the end of its turn. `user_text=False` keeps only the `<image>`
  tags of user turns (stage-1 captioning data, where the question is noise).
  """

  system: str
  system_format: str
  user_prefix: str
  user_suffix: str
  assistant_prefix: str
  reply_prefix: str
  end_of_turn: str
  after_reply: str = ""
  add_bos: bool = True
  special_tokens: tuple = ()
  user_text: bool = True

  def render(self, turns: list, tokenizer) -> list:  # pylint: disable=unused-argument
    system = self.system
    if turns[0][0] == SYSTEM:
      system, turns = turns[0][1], turns[1:]
    segments = [Segment(self.system_format.format(system) if system else "", False)]
    for role, text in turns:
      if role == USER:
        body = text if self.user_text else IMAGE_TAG * text.count(IMAGE_TAG)
        segments.append(Segment(self.user_prefix + body + self.user_suffix, False))
      else:
        segments += [Segment(self.assistant_prefix, False),
                     Segment(self.reply_prefix + text + self.end_of_turn, True),
                     Segment(self.after_reply, False)]
    return _drop_empty(segments)


@dataclasses.dataclass(frozen=True)
class TokenizerChatTemplate:
  """The tokenizer's own Jinja `chat_template` (SmolLM2's chatml, say).

  Assistant spans are found by rendering the conversation prefix by prefix: the learned
  text of assistant turn i is what rendering turns [0, i] adds to rendering turns
  [0, i) with the generation prompt, i.e. exactly what the model generates after that
  prompt. Whitespace after the span's last special token (chatml's "\\n" after
  `<|im_end|>`) is scaffolding, not learned. This works for any template whose
  renderings of shorter prefixes are prefixes of the whole, without `{% generation %}`
  markers (SmolLM2's template has none). The template writes its own BOS, if any.
  """

  add_bos: bool = False
  special_tokens: tuple = ()

  def render(self, turns: list, tokenizer) -> list:
    if not getattr(tokenizer, "chat_template", None):
      raise VisRegionError("template 'tokenizer'", "expected a tokenizer with a chat_template")
    messages = [{"role": role, "content": text} for role, text in turns]

    def rendered(n: int, generation_prompt: bool) -> str:
      return tokenizer.apply_chat_template(messages[:n], tokenize=False,
                                           add_generation_prompt=generation_prompt)

    full = rendered(len(messages), False)
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    segments, done = [], 0
    for i, (role, _) in enumerate(turns):
      if role != ASSISTANT:
        continue
      prompt, with_reply = rendered(i, True), rendered(i + 1, False)
      if not (len(prompt) >= done and with_reply.startswith(prompt)
              and full.startswith(with_reply)):
        raise VisRegionError("template 'tokenizer'", "expected a chat_template whose rendering of "
                             "a conversation prefix is a prefix of the whole rendering")
      reply = with_reply[len(prompt):]
      stripped = reply.rstrip()
      end = len(stripped) if any(stripped.endswith(t) for t in specials) else len(reply)
      segments += [Segment(full[done:len(prompt)], False), Segment(reply[:end], True)]
      done = len(prompt) + end
    segments.append(Segment(full[done:], False))
    return _drop_empty(segments)


TEMPLATES = {
    # LLaVA-1.5 `conv_vicuna_v1`: "SYSTEM USER: q ASSISTANT: a</s>USER: ...". The space
    # after "ASSISTANT:" is learned: inference prompts end at "ASSISTANT:" and LLaVA's
    # masking also learns the token that carries it.
    "vicuna_v1": ChatTemplate(
        system=_LLAVA_SYSTEM, system_format="{} ", user_prefix="USER: ", user_suffix=" ",
        assistant_prefix="ASSISTANT:", reply_prefix=" ", end_of_turn="</s>",
        special_tokens=("</s>",)),
    # Llama-3 header format, as LLaVA-NeXT's `conv_llama3` writes it (with the LLaVA
    # system prompt); `<|begin_of_text|>` is the Llama-3 tokenizer's BOS. Bunny's own
    # repository trains Llama-3 with a vicuna-style "USER:/ASSISTANT:" format instead.
    "llama3": ChatTemplate(
        system=_LLAVA_SYSTEM,
        system_format="<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>",
        user_prefix="<|start_header_id|>user<|end_header_id|>\n\n", user_suffix="<|eot_id|>",
        assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n", reply_prefix="",
        end_of_turn="<|eot_id|>",
        special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    # Phi-3 chat format as microsoft/Phi-3-mini-4k-instruct's chat_template writes it: no
    # default system prompt, no BOS (early revisions wrote one), and not the eos_token it
    # appends after the last turn, which no reply is trained to emit.
    "phi3": ChatTemplate(
        system="", system_format="<|system|>\n{}<|end|>\n", user_prefix="<|user|>\n",
        user_suffix="<|end|>\n", assistant_prefix="<|assistant|>\n", reply_prefix="",
        end_of_turn="<|end|>", after_reply="\n", add_bos=False,
        special_tokens=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
    # LLaVA's stage-1 `preprocess_plain`: BOS, the image tokens, the caption and LLaVA's
    # `conv_plain` separator "\n" (not EOS); system prompts and question text are dropped.
    "plain": ChatTemplate(
        system="", system_format="", user_prefix="", user_suffix="", assistant_prefix="",
        reply_prefix="", end_of_turn="\n", user_text=False),
    "tokenizer": TokenizerChatTemplate(),
}
