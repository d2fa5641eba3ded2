import sys

from securecore.cli import main

sys.exit(main())
