import sys

from palisade.auth.cli import main

sys.exit(main())
