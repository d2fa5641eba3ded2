import sys

from securecore_lab.cli import main

sys.exit(main())
