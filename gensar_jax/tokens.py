"""The GenSAR token vocabulary: behaviour tokens and identifier code tokens.

An item in a recommendation context is written `<R_I>` + its collaborative identifier,
in a search context `<S_I>` + its semantic identifier; a query is `<S_Q>` + its words.
Identifier codes are one token each, named `<LEVEL_CODE>`: shared levels `M1, M2, ..`,
semantic-specific `S1, S2, ..`, collaborative-specific `R1, R2, ..` (e.g. `<M1_17>`).
"""

from collections.abc import Sequence

REC_ITEM = "<R_I>"  # Precedes an item in a recommendation context.
SEARCH_QUERY = "<S_Q>"  # Precedes a query.
SEARCH_ITEM = "<S_I>"  # Precedes an item in a search context.
BEHAVIOUR_TOKENS = (REC_ITEM, SEARCH_QUERY, SEARCH_ITEM)


def code_token(level_name: str, code: int) -> str:
  """The token of one code, e.g. `code_token("M1", 17) == "<M1_17>"`."""
  return f"<{level_name}_{int(code)}>"


def level_tokens(level_name: str, codebook_size: int) -> list[str]:
  """All tokens of one level in code order (code c is entry c)."""
  return [code_token(level_name, c) for c in range(codebook_size)]


def identifier_text(level_names: Sequence[str], codes: Sequence[int]) -> str:
  """An identifier as text, its code tokens concatenated without spaces."""
  if len(level_names) != len(codes):
    raise ValueError(f"{len(codes)} codes for {len(level_names)} levels")
  return "".join(code_token(n, c) for n, c in zip(level_names, codes))
