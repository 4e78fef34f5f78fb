"""`python -m gpt25` (and `torchrun -m gpt25`) runs the command line."""

from gpt25.cli import main

if __name__ == "__main__":
    main()
