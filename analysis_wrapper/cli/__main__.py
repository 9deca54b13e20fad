import sys

from analysis_wrapper.cli.app import main

sys.exit(main())
