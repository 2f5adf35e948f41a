import sys

from palisade.gateway.cli import main

sys.exit(main())
