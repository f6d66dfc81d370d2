"""`python -m conversion ...`: see conversion/cli.py."""

import sys

from conversion.cli import main

sys.exit(main())
