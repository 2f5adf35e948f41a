import sys

from palisade.visitors.cli import main

sys.exit(main())
