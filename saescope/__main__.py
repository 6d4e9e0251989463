import sys

from saescope.cli import main

sys.exit(main())
