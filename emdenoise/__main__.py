"""``python -m emdenoise TASK --name=value ...``"""

import sys

from emdenoise.cli import main

sys.exit(main())
