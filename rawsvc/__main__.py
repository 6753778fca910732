import sys

from rawsvc.cli import main

sys.exit(main())
