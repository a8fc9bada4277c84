import sys

from mortalnet.cli import main

sys.exit(main())
