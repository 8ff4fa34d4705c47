"""The ground floor: errors, the console (info/warn), the one atomic writer, paths and special files, limits
raised by environment variables, devices, the core count, progress bars and numeric helpers.

May import: nothing of cnncli (only the standard library, numpy and rich). Every other room may import it."""
