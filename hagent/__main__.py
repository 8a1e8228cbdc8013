import sys

from hagent.cli import main

sys.exit(main())
