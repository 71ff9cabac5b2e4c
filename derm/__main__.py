import sys

from derm.cli import main

sys.exit(main(exit_fast=True))
