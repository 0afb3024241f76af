# TEMPORARY shim for a running collection (removed after it ends; never committed)
import sys

from tilewright.commands.collect_cpu import _main

if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
