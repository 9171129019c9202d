import sys

from arch_compare.cli import main

sys.exit(main())
