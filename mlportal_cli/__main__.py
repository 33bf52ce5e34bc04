"""`python -m mlportal_cli …` runs the same command as the `mlportal` script."""
import sys

from mlportal_cli.main import main

sys.exit(main())
