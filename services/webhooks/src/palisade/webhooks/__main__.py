import sys

from palisade.webhooks.cli import main

sys.exit(main())
