import sys

from raykd.final.cli import main

main(sys.argv[1:])
