import sys

from cdvideo.cli import main

sys.exit(main())
