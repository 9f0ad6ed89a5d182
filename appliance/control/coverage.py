"""Does a parent's repository list cover a child's? (DESIGN.md §7: a child replicates only
what its parent has.)"""

from __future__ import annotations

import itertools
import re

from appliance.auth.scopes import matches


def pattern_covers(parent: str, child: str) -> bool:
    """Is every repository `child` names also named by `parent`? (DESIGN.md §7)

    A literal must be matched; a pattern must be the same pattern or narrower. Narrower is
    checked on witnesses: the child's wildcards filled with empty, short, dotted and (for `**`)
    multi-segment values must all match the parent's pattern.
    """
    if parent == child or parent == "**":
        return True
    if "*" not in child:
        return matches(parent, child)
    pieces = re.split(r"(\*\*|\*)", child)
    fills = {"*": ("", "q", "q-q.q_q"), "**": ("", "q", "q/q", "q.q/q-q/q")}
    choices = [fills.get(piece, (piece,)) for piece in pieces]
    return all(matches(parent, "".join(combo)) for combo in itertools.product(*choices))


def repositories_covered(parent: tuple[str, ...], child: tuple[str, ...]) -> str | None:
    """The first child entry no parent entry covers, or None."""
    for entry in child:
        if not any(pattern_covers(p, entry) for p in parent):
            return entry
    return None
