"""``python -m leakaudit`` (and ``torchrun -m leakaudit``) runs the CLI."""

from leakaudit.cli.commands import main

if __name__ == "__main__":
    main()
