import sys

from marketflow.cli import main

sys.exit(main())
