"""``warmer ref``: print the canonical form of image references."""

from __future__ import annotations

import click

from warmer.cli.common import CONTEXT_SETTINGS, BadInput, emit_json, json_option
from warmer.oci.reference import InvalidReference, parse


@click.command("ref", context_settings=CONTEXT_SETTINGS)
@click.argument("references", nargs=-1, required=True)
@json_option
def ref_command(references: tuple[str, ...], as_json: bool) -> None:
    """Normalise image references as Docker does.

    \b
      warmer ref ubuntu            -> docker.io/library/ubuntu:latest
      warmer ref ghcr.io/o/app@sha256:...
    Exits 2 at the first invalid reference, naming it and why.
    """
    for text in references:
        try:
            ref = parse(text)
        except InvalidReference as exc:
            raise BadInput(str(exc)) from None
        if as_json:
            emit_json(
                {
                    "input": text,
                    "canonical": str(ref),
                    "registry": ref.registry,
                    "repository": ref.repository,
                    "tag": ref.tag,
                    "digest": ref.digest,
                    "familiar": ref.familiar,
                }
            )
        else:
            click.echo(str(ref))


commands = [ref_command]
