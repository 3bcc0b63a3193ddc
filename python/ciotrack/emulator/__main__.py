import sys

from ciotrack.emulator.cli import main

sys.exit(main())
