"""``python -m shardgear``: the same as the ``shardgear`` command."""

from shardgear.cli import main

raise SystemExit(main())
