"""``python -m grokray.cli`` (as ``python -m grokray`` and the ``grokray`` command)."""
import sys

from grokray.cli import main

sys.exit(main())
