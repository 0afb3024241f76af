"""Sub-commands of the ``tilewright`` CLI; each module exposes ``register(subparsers)``.

``register`` adds a parser with ``set_defaults(func=run)`` where ``run(args) -> int`` returns
the exit code (0 only on success). Output for machines goes through ``--json``.
"""
