"""``sprawlctl keys generate``: an X25519 key pair for end-to-end encryption
(:mod:`sprawl.client.e2e`; docs/security.md, "End-to-end encryption")."""

from __future__ import annotations

import click

from sprawl.client.e2e import generate_key, save_key
from sprawl.ctl.root import CtlError, cli


@cli.group()
def keys() -> None:
    """End-to-end encryption keys."""


@keys.command()
@click.option(
    "-o",
    "--out",
    "path",
    required=True,
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Private key file to write (mode 0600); the public key goes to FILE.pub.",
)
@click.option("--id", "kid", help="Key id (default: derived from the public key).")
def generate(path: str, kid: str | None) -> None:
    """Generate a key pair: give FILE.pub to producers (--encrypt-for), keep FILE for
    consumers (--decrypt-with)."""
    try:
        key = generate_key(kid)
        priv, pub = save_key(key, path)
    except FileExistsError:
        raise CtlError(f"{path} exists; not overwriting a key") from None
    except (OSError, ValueError) as exc:
        raise CtlError(str(exc)) from None
    click.echo(f"key id {key.kid}: private {priv}, public {pub}")
