"""How the ``selfplay`` command line parses: list options, and usage errors that show usage.

Every list option (a typer ``List[...]`` option, ``multiple`` in click's terms) takes its
values in any of the spellings users type: repeated (``--elements Cu --elements Al``),
space-separated after one option (``--elements Cu Al Ni``, as many tools accept) and, for
names such as element symbols and theory keys, comma-separated (``--elements Cu,Al,Ni``).

Click gives an option exactly one value per occurrence, so :class:`SelfplayCommand`
rewrites ``--elements Cu Al Ni`` to ``--elements Cu --elements Al --elements Ni`` before
click parses: the words after a list option belong to it up to the next word that starts
with ``-``. (No command has both a list option and positional arguments, so no word is
taken from an argument; ``--`` still ends the options.) Commas, and spaces inside one
quoted word, are split by :func:`split_names`, not here: paths (``train --data``) may
contain them.

Click raises some usage errors without their context (an option at the end of the line
that lacks its value), and then shows no usage line; both classes attach the context.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterable, Optional

import typer.core


def spread_list_options(args: list[str], list_options: set[str]) -> list[str]:
    """``[--elements, Cu, Al]`` -> ``[--elements, Cu, --elements, Al]`` for the options named."""
    spread: list[str] = []
    collecting: Optional[str] = None  # the list option whose further words we are reading
    awaiting_value = False  # the previous word was a list option without "=value"
    for position, word in enumerate(args):
        if word == "--":
            spread.extend(args[position:])
            break
        if awaiting_value:
            spread.append(word)  # click takes it as the option's value, whatever it looks like
            awaiting_value = False
            continue
        if collecting is not None and not word.startswith("-"):
            spread.extend((collecting, word))
            continue
        name, has_value, _ = word.partition("=")
        collecting = name if name in list_options else None
        awaiting_value = collecting is not None and not has_value
        spread.append(word)
    return spread


@contextmanager
def usage_context(ctx):
    """Usage errors raised inside carry ``ctx``, so that they show the usage line."""
    try:
        yield
    except typer.TyperException as exc:
        if getattr(exc, "ctx", False) is None:  # a UsageError raised without its context
            exc.ctx, exc.cmd = ctx, ctx.command
        raise


class SelfplayCommand(typer.core.TyperCommand):
    """A typer command whose list options also take space-separated words, and whose usage
    errors show the usage."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        names = {
            name
            for param in self.get_params(ctx)
            if param.param_type_name == "option" and getattr(param, "multiple", False)
            for name in (*param.opts, *param.secondary_opts)
        }
        with usage_context(ctx):
            return super().parse_args(ctx, spread_list_options(args, names))


class SelfplayGroup(typer.core.TyperGroup):
    """A typer group (``selfplay``, ``selfplay db``) whose usage errors show the usage."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        with usage_context(ctx):
            return super().parse_args(ctx, args)


def split_names(values: Optional[Iterable[str]]) -> list[str]:
    """``['Cu,Ni', 'O']`` -> ``['Cu', 'Ni', 'O']``: the values of a list option of names.

    Spaces separate too, for a quoted ``--elements "H C N O"``.
    """
    return [part for value in values or () for part in re.split(r"[,\s]+", value) if part]
