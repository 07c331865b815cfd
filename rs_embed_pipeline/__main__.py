"""``python -m rs_embed_pipeline <command> ...``: the command lines of ``rs_embed_pipeline/cli/`` by name
(``build``, ``search``, ``demo``; a ``-`` in the name means ``_``), each with its own ``--help``.
Orchestrator environment (``.venv``). The package's ``__init__`` stays free of imports; this module
runs only with ``-m``."""

import importlib
import pkgutil
import sys

import rs_embed_pipeline.cli as cli


def commands() -> list[str]:
    """The modules of ``cli/`` that have a ``main``, by name (looked up without importing them)."""
    return sorted(m.name for m in pkgutil.iter_modules(cli.__path__) if m.name not in ("names",))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = commands()
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: python -m rs_embed_pipeline <command> [--help]\ncommands: {', '.join(names)}")
        return 0 if args else 2
    name = args[0].replace("-", "_")
    if name not in names:
        print(f"error: unknown command {args[0]!r}; commands: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"rs_embed_pipeline.cli.{name}")  # only the command asked for
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
