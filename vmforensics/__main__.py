"""python -m vmforensics"""

import sys

from vmforensics.cli import main

sys.exit(main())
