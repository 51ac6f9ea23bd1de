"""The one table of the two ranking tasks: identifier kind and behaviour token of each.

Recommendation writes an item as `<R_I>` + its collaborative identifier, search as
`<S_I>` + its semantic identifier (`gensar_jax.tokens`). Every other map (kind -> task,
the kinds in order) is derived from `TASK_KINDS` here.
"""

from gensar_jax import tokens

# The two ranking tasks, in the order every table and loop uses (the one copy).
TASKS: tuple[str, ...] = ("recommendation", "search")
# task -> (identifier kind, behaviour token that precedes an item in that task's context)
TASK_KINDS: dict[str, tuple[str, str]] = {
    "search": ("semantic", tokens.SEARCH_ITEM),
    "recommendation": ("collaborative", tokens.REC_ITEM),
}
KIND_OF_TASK: dict[str, str] = {t: k for t, (k, _) in TASK_KINDS.items()}
ITEM_TOKEN_OF_TASK: dict[str, str] = {t: b for t, (_, b) in TASK_KINDS.items()}
TASK_OF_KIND: dict[str, str] = {k: t for t, k in KIND_OF_TASK.items()}
KINDS: tuple[str, ...] = tuple(KIND_OF_TASK.values())  # ("semantic", "collaborative")
