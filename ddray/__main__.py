import sys

from ddray.cli import main

sys.exit(main())
