"""``python -m shardgear``: the same as the ``shardgear`` command."""

from shardgear.start import main

raise SystemExit(main())
