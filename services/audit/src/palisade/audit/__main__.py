import sys

from palisade.audit.cli import main

sys.exit(main())
