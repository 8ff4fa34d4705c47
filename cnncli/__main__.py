"""``python -m cnncli`` (also what ``torchrun -m cnncli train ...`` runs)."""

from cnncli.cli.app import main

if __name__ == "__main__":
    main()
