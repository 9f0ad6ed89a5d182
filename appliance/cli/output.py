"""What the `token`, `scope-map` and `cloud` commands share: `--output json|table`, `--yes` and
its confirmation, ACR's `--repository REPO ACTION [ACTION…]` option, and one-line failures.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from appliance.auth.tokens import CredentialError

OUTPUTS = ("table", "json")

output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(OUTPUTS, case_sensitive=False),
    default="table",
    show_default=True,
    envvar="CONNECTED_REGISTRY_OUTPUT",
    show_envvar=True,
    help="How to print the result: a table for people, JSON for scripts.",
)


def yes_option(before: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--yes` on a verb that asks first: `before` says what it asks about."""
    return click.option("--yes", "-y", is_flag=True, help=f"Do not ask before {before}.")


# A verb that asks nothing still takes `--yes` (az-style scripts pass it to every verb), but
# neither shows it nor gets it.
no_question_option = click.option("--yes", "-y", is_flag=True, hidden=True, expose_value=False)


def emit(output: str, data: Any, table: Callable[[], str]) -> None:
    """Print `data` as JSON, or the text `table()` renders for people."""
    if output.lower() == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(table())


def format_fields(fields: Sequence[tuple[str, str]]) -> str:
    """`Label:  value` lines, the values aligned."""
    width = max(len(label) for label, _ in fields) + 1
    return "\n".join(f"{label + ':':<{width}}  {value}" for label, value in fields)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns aligned under upper-case headers; the header alone for no rows."""
    lines = [tuple(h.upper() for h in headers), *(tuple(map(str, r)) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def confirm(question: str, yes: bool) -> None:
    """Go on if `--yes` was given or a person at a terminal says yes; refuse otherwise."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(
            "refusing to delete without confirmation and no terminal to ask on: pass --yes"
        )
    click.confirm(question, abort=True)


class CredentialGroup(click.Group):
    """A command group whose refused operations end as one line and exit 1 (DESIGN.md §7)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CredentialError as err:
            raise click.ClickException(str(err)) from None
        except sqlite3.Error as err:
            raise click.ClickException(f"registry database: {err}") from None


class _Permission(click.ParamType):
    name = "permission"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, tuple[str, ...]]:
        repository, *actions = value.split() if isinstance(value, str) else value
        if repository.startswith("-"):
            self.fail(
                f"expected a repository, not {repository!r}: REPO ACTION [ACTION…]", param, ctx
            )
        if not actions:
            self.fail(
                f"{repository!r} needs at least one action after it: REPO ACTION [ACTION…]",
                param,
                ctx,
            )
        return repository, tuple(actions)


class RepositoryOption(click.Option):
    """`--repository REPO ACTION [ACTION…]`, repeatable, as ACR writes permissions; the value
    is a tuple of `(repository, (action, …))`.

    Click gives an option a fixed number of values, so the parser's handler for this option is
    wrapped: after REPO it also takes every following argument up to the next option. The
    positional NAME therefore goes before these options.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("metavar", "REPO ACTION [ACTION…]")
        super().__init__(*args, multiple=True, type=_Permission(), **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        handler = parser._long_opt[self.opts[0]]
        process = handler.process

        def take_actions(value: str, state: Any) -> None:
            actions = []
            while state.rargs and not state.rargs[0].startswith("-"):
                actions.append(state.rargs.pop(0))
            process((value, *actions), state)

        handler.process = take_actions


def human_size(count: int) -> str:
    """Bytes for people: 1.5 GiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
