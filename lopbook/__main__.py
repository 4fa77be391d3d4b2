import sys

from lopbook.cli import main

sys.exit(main())
