"""Small shared helpers: atomic files, logging, console tables, progress, config glue."""
