import sys

from palisade.apikeys.cli import main

sys.exit(main())
