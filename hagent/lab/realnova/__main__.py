"""``python -m hagent.lab.realnova --dir DIR --hosts a,b,c``: run a real Nova lab until
SIGTERM (``supervisor.py``)."""
import sys

from hagent.lab.realnova.supervisor import main

sys.exit(main())
