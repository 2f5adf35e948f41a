import sys

from palisade.crypto.cli import main

sys.exit(main())
