import sys

from spikect.cli import main

sys.exit(main())
