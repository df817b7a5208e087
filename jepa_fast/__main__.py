import sys

from jepa_fast.cli import main

sys.exit(main())
