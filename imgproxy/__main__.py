import sys

from imgproxy.cli import main

sys.exit(main())
