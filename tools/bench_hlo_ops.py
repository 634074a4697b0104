"""What each instruction of a compiled XLA program is, read from its optimized HLO text.

A profile names the ops it timed by their HLO instruction (`ynn_fusion.2`,
`loop_transpose_fusion.14`); a fusion's name alone does not say whether it holds the
step's matmuls or an elementwise tail. `hlo_ops(compiled.as_text())` maps every
instruction to its category, the heaviest kind of work it holds (`CATEGORIES`, in that
order: a fusion with a dot and a reduce is a dot), the other kinds beside it, and the
JAX operation it came from (the `op_name` metadata of the instruction that gave the
category) with that instruction's output shape, so that a profile table can say
"dot+reduce" and "f32[64,49152] jit(step)/.../dot_general" (the LM head, by its shape).
"""

import dataclasses
import re

# Heaviest first: a fusion's category is the first of these it holds.
CATEGORIES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
              "custom-call", "convolution", "dot", "scatter", "gather", "select-and-scatter",
              "reduce-window", "sort", "reduce", "transpose", "dynamic-update-slice",
              "dynamic-slice", "concatenate", "pad", "copy")
ELEMENTWISE = "elementwise"   # a fusion of none of CATEGORIES: maps, broadcasts, slices, converts

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"(?<![\w.%\-])([a-z][a-z0-9\-]*)\(")
_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_MODULE = re.compile(r"^HloModule\s+([\w.\-]+)")
_LAYOUT = re.compile(r"\{[^}]*\}")


@dataclasses.dataclass(frozen=True)
class HloOp:
  """One instruction: its category, the kinds it holds (category first), and where it came
  from: the output shape and JAX op name of the instruction that gave the category."""
  opcode: str
  category: str
  kinds: tuple
  shape: str
  op_name: str

  @property
  def label(self) -> str:
    """"dot+reduce" for a fusion, the opcode or custom-call target otherwise."""
    return "+".join(self.kinds) if self.kinds else self.category


@dataclasses.dataclass
class _Instruction:
  opcode: str
  called: list
  op_name: str
  target: str
  shape: str


def module_name(hlo_text: str) -> str:
  """The `HloModule` name of the text: what a profile's events call the program (`hlo_module`)."""
  for line in hlo_text.splitlines():
    m = _MODULE.match(line)
    if m:
      return m.group(1)
  return ""


def _parse(hlo_text: str) -> dict:
  """{computation: {instruction: _Instruction}} of HLO text."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    if not line.startswith((" ", "\t")):
      m = _COMPUTATION.match(line)
      current = computations.setdefault(m.group(1), {}) if m else None
      continue
    m = _INSTRUCTION.match(line)
    if current is None or not m:
      continue
    name, rest = m.groups()
    opcode = _OPCODE.search(rest)
    called = _CALLED.findall(rest)
    for branches in _BRANCHES.findall(rest):
      called += [b.strip().lstrip("%") for b in branches.split(",") if b.strip()]
    op_name, target = _OP_NAME.search(rest), _TARGET.search(rest)
    shape = _LAYOUT.sub("", rest[:opcode.start()]).strip() if opcode else ""
    current[name] = _Instruction(opcode.group(1) if opcode else "", called, op_name.group(1) if op_name else "",
                                 target.group(1) if target else "", shape)
  return computations


def _contents(computations: dict, name: str, seen: set) -> list:
  """Every instruction of a computation and of those it calls (fusions inside fusions)."""
  if name in seen or name not in computations:
    return []
  seen.add(name)
  out = []
  for instruction in computations[name].values():
    out.append(instruction)
    for callee in instruction.called:
      out += _contents(computations, callee, seen)
  return out


def _classify(instruction: _Instruction, computations: dict) -> HloOp:
  if instruction.opcode != "fusion":
    category = (f"custom-call:{instruction.target}" if instruction.opcode == "custom-call" and instruction.target
                else instruction.opcode)
    return HloOp(instruction.opcode, category, (), instruction.shape, instruction.op_name)
  inside = [i for c in instruction.called for i in _contents(computations, c, set())]
  kinds = tuple(k for k in CATEGORIES if any(i.opcode == k for i in inside))
  if not kinds:
    return HloOp("fusion", ELEMENTWISE, (), instruction.shape, instruction.op_name)
  main = next(i for i in inside if i.opcode == kinds[0])
  return HloOp("fusion", kinds[0], kinds, main.shape, main.op_name)


def hlo_ops(hlo_text: str) -> dict:
  """{instruction name: HloOp} for every instruction of every computation of the text.

  Names are unique within an HLO module, so one map serves the entry computation and
  the bodies of its loops and conditionals, whose thunks a profile times too.
  """
  computations = _parse(hlo_text)
  return {name: _classify(instruction, computations)
          for instructions in computations.values() for name, instruction in instructions.items()}
