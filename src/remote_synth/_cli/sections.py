"""``--help`` in sections: a command's options grouped by what they are about, not one flat list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import click

__all__ = ["SectionedCommand"]


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options under ``sections`` (title → option names), in that
    order; an option in no section goes under "Other options" (``--help`` last)."""

    def __init__(self, *args: object, sections: Mapping[str, Sequence[str]] = {}, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sections = {title: list(names) for title, names in sections.items()}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records: dict[str, list[tuple[str, str]]] = {title: [] for title in self.sections}
        records["Other options"] = []
        home = {name: title for title, names in self.sections.items() for name in names}
        for param in self.get_params(ctx):
            if not isinstance(param, click.Option):  # the arguments are in the usage line
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                records[home.get(param.name or "", "Other options")].append(record)
        for title, rows in records.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
