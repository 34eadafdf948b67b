"""``python -m ownmark.cli``."""

import sys

from ownmark.cli import main

sys.exit(main())
