"""``python -m ownmark``: the same as the ``ownmark`` command."""

from ownmark.cli import main

raise SystemExit(main())
