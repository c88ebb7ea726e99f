"""Writes ``docs/client-reference.md``, the reference of the public client API, from the
docstrings and signatures of what :mod:`sprawl.client` exports (and the end-to-end encryption
module): ``python -m sprawl.client.reference > docs/client-reference.md``.  A unit test checks
the committed file is what this prints, and that nothing public lacks a docstring."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from typing import Any

#: The modules whose public names make the reference, in its order.
MODULES = (
    "sprawl.client.api",
    "sprawl.client.txclient",
    "sprawl.client.messages",
    "sprawl.client.e2e",
    "sprawl.client.errors",
)
#: Public names per module (the rest of each module is internal).
PUBLIC: dict[str, tuple[str, ...]] = {
    "sprawl.client.api": ("SprawlClient", "Subscription"),
    "sprawl.client.txclient": ("TxSprawlClient", "TxSubscription"),
    "sprawl.client.messages": ("Message", "Published", "FetchResult", "outgoing"),
    "sprawl.client.e2e": (
        "generate_key",
        "save_key",
        "load_public_keys",
        "load_private_keys",
        "Encryptor",
        "Decryptor",
        "DecryptError",
        "PublicKey",
        "PrivateKey",
        "log_undecryptable",
    ),
    "sprawl.client.errors": ("ClientError",),
}


def public_objects() -> Iterator[tuple[str, str, Any]]:
    """``(module, qualified name, object)`` of every public class, function and method."""
    for modname in MODULES:
        module = importlib.import_module(modname)
        for name in PUBLIC[modname]:
            obj = getattr(module, name)
            yield modname, name, obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if isinstance(member, (classmethod, staticmethod)):
                        member = member.__func__
                    if attr.startswith("_") or not (callable(member) or isinstance(member, property)):
                        continue
                    yield modname, f"{name}.{attr}", member


def _signature(obj: Any) -> str:
    if isinstance(obj, property):
        return ""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parts: list[str] = []
    star = False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.kind is p.VAR_POSITIONAL:
            star = True
        prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        text = prefix + p.name
        if p.annotation is not p.empty:
            text += f": {p.annotation}"
        if p.default is not p.empty:
            default = p.default
            text += f" = {getattr(default, '__qualname__', None) or repr(default)}"
        parts.append(text)
    ret = f" -> {sig.return_annotation}" if sig.return_annotation is not sig.empty else ""
    return f"({', '.join(parts)}){ret}"


def render() -> str:
    """The reference as Markdown."""
    out = [
        "# Client library reference",
        "",
        "Generated from the docstrings by `python -m sprawl.client.reference > docs/client-reference.md`",
        "(a test checks it is current). The guide is [client.md](client.md).",
        "",
    ]
    for modname in MODULES:
        module = importlib.import_module(modname)
        out += [f"## `{modname}`", "", inspect.cleandoc(module.__doc__ or ""), ""]
        for _, qualname, obj in public_objects():
            if qualname.split(".")[0] not in PUBLIC[modname]:
                continue
            doc = inspect.getdoc(obj) or ""
            level = "####" if "." in qualname else "###"
            out += [f"{level} `{qualname}{_signature(obj)}`", "", doc, ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
